"""TRL's SFTTrainer is our SFT's peer (issue 10): on the same conversations and the exported model, it
tokenizes to our ids, counts exactly our loss tokens, and its first-step loss equals ours within 1e-4.

Ours is the loss `sft()` logs for step 1 (one conversation a row, all of them in the step, read from a
JSONL file); TRL's is the loss its Trainer logs for step 1. Both are the mean over the step's counted
tokens (TRL divides by `num_items_in_batch`), so the mixture's shuffling changes nothing.

Two ways TRL counts only the reply:
- `assistant_only_loss` on a `messages` dataset, every conversation (multi-turn too). TRL takes the
  assistant spans from the template's `{% generation %}` markers; our exported template has none (TRL
  swaps in a marked twin only for templates it knows), so the test gives it `TRAINING_TEMPLATE`, ours
  with the markers around each reply and its `<|end|>`, and checks that it renders the same text.
- `completion_only_loss` on a prompt/completion dataset with the exported template as it is. It counts
  only the completion, the last reply, so it matches our mask (every reply) on single-turn conversations
  alone; those are what it trains on.
"""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.data.chat import CHAT_TEMPLATE, END, render_chat
from scratchlm.data.tasks import get_task
from scratchlm.finetune import load_sft_config, sft
from scratchlm.interop.hf import export_hf
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import save_model
from scratchlm.tokenizer import train_bpe
from scratchlm.train.run_dir import RunDir

trl = pytest.importorskip("trl", reason="trl is a test extra (pip install .[dev])")
datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

MULTI_TURN = [
    [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "What is 12 + 30?"},
        {"role": "assistant", "content": "12 + 30 = 42."},
        {"role": "user", "content": "And two more?"},
        {"role": "assistant", "content": " 44, done.\n"},
    ],
    [
        {"role": "user", "content": "Say hello twice."},
        {"role": "assistant", "content": "hello hello"},
        {"role": "user", "content": "Once more, in caps."},
        {"role": "assistant", "content": ""},
    ],
]
CONVERSATIONS = get_task("arithmetic:digits=2,op=+").examples("train", 6) + MULTI_TURN
SINGLE_TURN = [c for c in CONVERSATIONS if len(c) == 2]

# The exported template with each reply (content and <|end|>) inside HF's {% generation %} markers.
_TURN = "{{- '<|' ~ message['role'] ~ '|>' ~ message['content'] ~ '" + END + "' -}}"
_MARKED_TURN = (
    "{{- '<|' ~ message['role'] ~ '|>' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] ~ '" + END + "' -}}{%- endgeneration -%}"
    "{%- else -%}{{- message['content'] ~ '" + END + "' -}}{%- endif -%}"
)
assert _TURN in CHAT_TEMPLATE, "CHAT_TEMPLATE's turn changed: update _TURN and _MARKED_TURN"
TRAINING_TEMPLATE = CHAT_TEMPLATE.replace(_TURN, _MARKED_TURN)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random Llama-style model with a small chat BPE, as our model folder and as its HF export."""
    texts = [m["content"] for c in CONVERSATIONS for m in c]
    tokenizer = train_bpe(" ".join(texts) * 20 + " The quick brown fox jumps over the lazy dog.", 320)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layers=2, d_model=32,
                         n_heads=4, n_kv_heads=2, tie_embeddings=True)  # fmt: skip
    model = Transformer(config).eval()
    root = tmp_path_factory.mktemp("peer")
    save_model(root / "model", model, tokenizer)
    export_hf(model, root / "hf", tokenizer)
    return root / "model", root / "hf", tokenizer


def our_first_loss(base, conversations, folder) -> float:
    """Step 1's loss as `sft()` logs it: every conversation in the step, one a row, fp32."""
    data = folder / "conversations.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    settings = {
        "base": str(base), "device": "cpu", "precision": "fp32", "data.tasks": "[]",
        "data.files": f"['{data}']", "data.examples": len(conversations),
        "data.batch_size": len(conversations), "data.packing": "false", "budget.max_time": "",
        "budget.max_steps": 1, "logging.every": 1, "logging.progress": "false",
        "logging.tensorboard": "false",
    }  # fmt: skip
    config = load_sft_config(None, [f"{k}={v}" for k, v in settings.items()])
    sft(config, folder / "run", say=lambda *_: None)
    (record,) = RunDir(folder / "run").read_metrics("train")
    return record["loss"]


def trl_trainer(hf_dir, dataset: list[dict], folder, **loss_option):
    """TRL's SFTTrainer on the exported model: fp32 on the CPU, every example in one step, no packing."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    if loss_option.get("assistant_only_loss"):
        tokenizer.chat_template = TRAINING_TEMPLATE
    model = transformers.AutoModelForCausalLM.from_pretrained(
        hf_dir, local_files_only=True, dtype=torch.float32
    )
    args = trl.SFTConfig(
        output_dir=str(folder / "trl"), per_device_train_batch_size=len(dataset), max_steps=1,
        logging_steps=1, report_to=[], use_cpu=True, bf16=False, packing=False, max_length=None,
        save_strategy="no", disable_tqdm=True, activation_checkpointing=False, **loss_option,
    )  # fmt: skip
    return trl.SFTTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(dataset),
                          processing_class=tokenizer)  # fmt: skip


def check_same_tokens(trainer, conversations, tokenizer) -> None:
    """TRL's ids are ours, conversation by conversation, and it counts exactly the tokens we count."""
    prepared = trainer.train_dataset
    for index, messages in enumerate(conversations):
        ids, mask = render_chat(messages, tokenizer)
        assert prepared[index]["input_ids"] == ids, f"tokenization differs on conversation {index}"
        counted = [int(label != -100) for label in prepared[index]["labels"]]
        assert counted == mask, f"counted tokens differ on conversation {index}"


def test_the_training_template_renders_what_the_exported_one_does(exported):
    _, hf_dir, _ = exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    for messages in CONVERSATIONS:
        exported_text = tokenizer.apply_chat_template(messages, tokenize=False)
        marked_text = tokenizer.apply_chat_template(messages, tokenize=False, chat_template=TRAINING_TEMPLATE)
        assert marked_text == exported_text


def test_assistant_only_loss_matches_our_first_step_loss(exported, tmp_path):
    base, hf_dir, tokenizer = exported
    ours = our_first_loss(base, CONVERSATIONS, tmp_path)
    dataset = [{"messages": c} for c in CONVERSATIONS]
    trainer = trl_trainer(hf_dir, dataset, tmp_path, assistant_only_loss=True)
    check_same_tokens(trainer, CONVERSATIONS, tokenizer)
    trainer.train()
    theirs = trainer.state.log_history[0]["loss"]
    assert abs(theirs - ours) < 1e-4, (theirs, ours)


def test_completion_only_loss_matches_our_first_step_loss(exported, tmp_path):
    base, hf_dir, tokenizer = exported
    ours = our_first_loss(base, SINGLE_TURN, tmp_path)
    dataset = [{"prompt": c[:-1], "completion": c[-1:]} for c in SINGLE_TURN]
    trainer = trl_trainer(hf_dir, dataset, tmp_path, completion_only_loss=True)
    check_same_tokens(trainer, SINGLE_TURN, tokenizer)
    trainer.train()
    theirs = trainer.state.log_history[0]["loss"]
    assert abs(theirs - ours) < 1e-4, (theirs, ours)
