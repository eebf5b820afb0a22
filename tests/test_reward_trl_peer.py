"""TRL's RewardTrainer is our reward objective's peer (issue 11): on the same pairs and a trained reward
model exported to HF, TRL tokenizes to our ids and its loss on the batch equals ours within 1e-5, with and
without the margin column and the center_rewards_coefficient term.

Ours is the objective's loss on one step that holds every pair (`loss_sum / count`, what the trainer
takes the gradient of); TRL's is `RewardTrainer.compute_loss` on its collator's batch of the same pairs.
Both are means over pairs. The model is trained a few steps first, so chosen and rejected rewards differ.
"""

from __future__ import annotations

import json

import pytest
import torch

from scratchlm.align.preferences import read_preferences
from scratchlm.align.reward import load_reward_model
from scratchlm.align.reward_config import load_reward_config
from scratchlm.align.reward_objective import RewardObjective, train_reward
from scratchlm.data.chat import render_chat
from scratchlm.interop.hf_reward import export_hf_reward
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import save_model
from scratchlm.tokenizer import train_bpe
from scratchlm.train import distributed

trl = pytest.importorskip("trl", reason="trl is a test extra (pip install .[dev])")
datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

RECORDS = [
    {"prompt": "Say something kind.", "responses": ["You are a good friend.", "Fine.", "Go away, fool!"]},
    {"prompt": "How is the weather?", "chosen": "Warm and bright.", "rejected": "Cold, dark, grim.",
     "margin": 0.7},
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Greet me."}],
     "chosen": "Hello!", "rejected": "What do you want?", "margin": 0.2},
    {"prompt": "Name a fruit.", "responses": ["A sweet apple.", "A pear", "Mud.", "No."]},
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A reward model trained 3 steps from a random Llama-style base with a small chat BPE, and its export."""
    root = tmp_path_factory.mktemp("rm-peer")
    prefs = root / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    texts = " ".join(json.dumps(r) for r in RECORDS)
    tokenizer = train_bpe(texts * 20 + " The quick brown fox jumps over the lazy dog.", 320)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layers=2, d_model=32,
                         n_heads=4, n_kv_heads=2, tie_embeddings=True)  # fmt: skip
    save_model(root / "sft", Transformer(config), tokenizer)
    values = {
        "base": str(root / "sft"), "prefs": str(prefs), "device": "cpu", "precision": "fp32",
        "data.heldout": 0.0, "data.batch_size": len(RECORDS), "budget.max_steps": 3, "optim.lr": 0.01,
        "logging.progress": "false", "logging.tensorboard": "false",
    }  # fmt: skip
    overrides = [f"{k}={v}" for k, v in values.items()]
    result = train_reward(load_reward_config(None, overrides), root / "run", say=lambda *_: None)
    model, tokenizer = load_reward_model(result.final_dir)
    export_hf_reward(model, tokenizer, root / "hf")
    return overrides, result.final_dir, root / "hf", prefs


def our_loss(overrides, final_dir, **loss) -> tuple[float, int]:
    """The objective's loss of a step holding every pair, with the trained model read back in."""
    settings = overrides + [f"loss.{k}={v}" for k, v in loss.items()]
    world = distributed.setup(torch.device("cpu"))
    objective = RewardObjective(load_reward_config(None, settings), world, world.device, say=lambda *_: None)
    objective.read_model("model", final_dir)
    objective.model.eval()
    (batch,) = objective.batches(0, 0.0).micro
    with torch.no_grad():
        loss_sum, count = objective.loss(objective.models, batch)
    return loss_sum.item() / count, count


def trl_loss(hf_dir, prefs, folder, margin: bool, center: float | None) -> tuple[float, object]:
    """TRL's loss on its own tokenization and collation of the same pairs (conversational format)."""
    pairs = read_preferences(prefs).pairs
    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    rows = [{"prompt": p.messages, "chosen": answer(p.chosen), "rejected": answer(p.rejected)} for p in pairs]
    if margin:
        rows = [{**row, "margin": p.margin} for row, p in zip(rows, pairs)]
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        hf_dir, local_files_only=True, dtype=torch.float32
    )
    args = trl.RewardConfig(
        output_dir=str(folder / "trl"), per_device_train_batch_size=len(rows), report_to=[], use_cpu=True,
        bf16=False, max_length=None, center_rewards_coefficient=center, disable_tqdm=True, save_strategy="no",
        activation_checkpointing=False,
    )  # fmt: skip
    trainer = trl.RewardTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                processing_class=tokenizer)  # fmt: skip
    prepared = [trainer.train_dataset[i] for i in range(len(rows))]
    inputs = trainer.data_collator(prepared)
    assert ("margin" in inputs) == margin
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, inputs)
    return loss.item(), prepared


@pytest.mark.parametrize("margin,center", [(False, None), (True, 0.01)])
def test_trls_reward_loss_equals_ours_on_the_same_batch(trained, tmp_path, margin, center):
    overrides, final_dir, hf_dir, prefs = trained
    theirs, prepared = trl_loss(hf_dir, prefs, tmp_path, margin, center)
    _, tokenizer = load_reward_model(final_dir)
    for example, pair in zip(prepared, read_preferences(prefs).pairs):
        for side, answer in (("chosen_ids", pair.chosen), ("rejected_ids", pair.rejected)):
            ids, _ = render_chat(pair.messages + [{"role": "assistant", "content": answer}], tokenizer)
            assert example[side] == ids, f"TRL tokenizes {answer!r} differently"
    ours, count = our_loss(overrides, final_dir, margin=margin, center_rewards_coefficient=center or 0.0)
    assert count == len(prepared)  # every pair in the one step
    assert abs(ours - theirs) < 1e-5, (ours, theirs)
    untrained_gap = abs(ours - 0.6931)  # log 2: every pair tied, what a zero or missing head would give
    assert untrained_gap > 1e-3
