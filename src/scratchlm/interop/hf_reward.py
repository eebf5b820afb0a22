"""Export a reward model as Hugging Face's `LlamaForSequenceClassification` with one label.

HF's classifier is the Llama body plus `score`, a bias-free `Linear(hidden, num_labels)`, read at each
row's last token that is not `pad_token_id` (the rightmost one, so left and right padding both work). Our
`RewardModel` is the same function (`scratchlm.align.reward`): the export is `scratchlm.interop.hf`'s body
under HF's names, `score.weight` as it is, and a `pad_token_id` that a scored sequence never ends with.
The body's LM head is left out: the classifier has none.

    export_hf_reward(reward_model, tokenizer, "rm-hf")
    AutoModelForSequenceClassification.from_pretrained("rm-hf")(ids).logits[:, 0]   # our rewards
"""

from __future__ import annotations

import json
from pathlib import Path

from scratchlm.align.reward import RewardModel, pad_id
from scratchlm.fileio import atomic_dir, save_safetensors
from scratchlm.interop.hf import hf_state_dict, to_hf_config
from scratchlm.interop.hf_tokenizer import write_hf_tokenizer

ARCHITECTURE = "LlamaForSequenceClassification"


def export_hf_reward(model: RewardModel, tokenizer, out_dir: str | Path) -> Path:
    """Write `out_dir` (replaced atomically): config.json, model.safetensors, our tokenizer/ folder, and
    for a BPE tokenizer HF's tokenizer files with the pad token named (what a reward pipeline pads with)."""
    body, pad = model.body, pad_id(tokenizer)
    config = to_hf_config(body.config, tokenizer.eot_id)  # refuses, by field, what Llama cannot compute
    config.update(
        architectures=[ARCHITECTURE], num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
        pad_token_id=pad, tie_word_embeddings=False,  # no LM head to tie to the embedding
    )  # fmt: skip
    tensors = {name: t for name, t in hf_state_dict(body).items() if name != "lm_head.weight"}
    tensors["score.weight"] = model.score.weight.detach().float().cpu().contiguous()  # (1, d)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_safetensors(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        tokenizer.save(tmp / "tokenizer")
        if getattr(tokenizer, "kind", None) == "bpe":  # a character vocabulary has no HF equivalent
            write_hf_tokenizer(tokenizer, tmp, body.config.context_length)
            settings = json.loads((tmp / "tokenizer_config.json").read_text())
            settings["pad_token"] = next(name for name, i in tokenizer.special_tokens.items() if i == pad)
            (tmp / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return out_dir
