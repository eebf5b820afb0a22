"""TRL's DPOTrainer is our DPO's peer (issue 12): on the same pairs and the exported models, it tokenizes
to our ids and counts our answer tokens, and its first-step loss and figures equal ours within 1e-5, for
the sigmoid loss and for length-normalised IPO.

The policy is the reference with perturbed weights: with policy == reference every implementation gives
ln 2 (sigmoid) or 1 / (4 beta^2) (IPO), so the comparison could not fail. Ours is the loss `dpo()` logs for
step 1, every pair in the step, with `reference` naming the unperturbed model; TRL's is the loss its
Trainer logs for step 1, with that model as `ref_model`. Both are the mean over the step's pairs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from scratchlm.align.dpo import encode_pairs
from scratchlm.align.dpo_config import load_dpo_config
from scratchlm.align.dpo_objective import dpo
from scratchlm.align.preferences import read_preferences
from scratchlm.interop.hf import export_hf
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import save_model
from scratchlm.tokenizer import train_bpe
from scratchlm.train.run_dir import RunDir

trl = pytest.importorskip("trl", reason="trl is a test extra (pip install .[dev])")
datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

RECORDS = [
    {"prompt": "What is 12 + 30?", "chosen": "12 + 30 = 42.", "rejected": "It is 43, I think."},
    {"prompt": "Say hello twice.", "chosen": "hello hello", "rejected": "no"},
    {"prompt": [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a fox."}],
     "chosen": "The quick brown fox.", "rejected": "A lazy dog jumps over the fox, slowly and at length."},
    {"prompt": [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1 2 3"},
                {"role": "user", "content": "Now backwards."}], "chosen": "3 2 1", "rejected": "1 2 3"},
]  # fmt: skip
FIGURES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random Llama-style reference and a perturbed copy (the policy), as model folders and HF exports."""
    texts = [m["content"] for r in RECORDS for m in _messages(r["prompt"])] + [r["chosen"] for r in RECORDS]
    tokenizer = train_bpe(" ".join(texts) * 20 + " The quick brown fox jumps over the lazy dog.", 320)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layers=2, d_model=32,
                         n_heads=4, n_kv_heads=2, tie_embeddings=True)  # fmt: skip
    reference, policy = Transformer(config).eval(), Transformer(config).eval()
    with torch.no_grad():  # noise far above the init's 0.02: answers get distinct, far from uniform log-probs
        for ref, pol in zip(reference.parameters(), policy.parameters(), strict=True):
            ref.add_(0.1 * torch.randn_like(ref))
            pol.copy_(ref + 0.1 * torch.randn_like(ref))
    root = tmp_path_factory.mktemp("dpo-peer")
    for name, model in (("reference", reference), ("policy", policy)):
        save_model(root / name, model, tokenizer)
        export_hf(model, root / f"{name}-hf", tokenizer)
    prefs = root / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return root, prefs, tokenizer


def _messages(prompt):
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def our_first_step(root, prefs, loss: str, folder) -> dict:
    settings = {
        "policy": str(root / "policy"), "reference": str(root / "reference"), "prefs": str(prefs),
        "loss": loss, "beta": 0.1, "device": "cpu", "precision": "fp32", "data.batch_size": len(RECORDS),
        "data.heldout": 0, "budget.max_time": "", "budget.max_steps": 1, "logging.every": 1,
        "logging.progress": "false", "logging.tensorboard": "false",
    }  # fmt: skip
    dpo(load_dpo_config(None, [f"{k}={v}" for k, v in settings.items()]), folder / loss, say=lambda *_: None)
    (record,) = RunDir(folder / loss).read_metrics("train")
    return record


def trl_first_step(root, loss: str, folder):
    """TRL's DPOTrainer on the exported models: fp32 on the CPU, every pair in one step."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "policy-hf", local_files_only=True)
    load = lambda name: transformers.AutoModelForCausalLM.from_pretrained(  # noqa: E731
        root / name, local_files_only=True, dtype=torch.float32
    )
    dataset = [{"prompt": _messages(r["prompt"]), "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in RECORDS]  # fmt: skip
    args = trl.DPOConfig(
        output_dir=str(folder / f"trl-{loss}"), loss_type=[loss], beta=0.1, max_length=None,
        per_device_train_batch_size=len(RECORDS), max_steps=1, logging_steps=1, report_to=[], use_cpu=True,
        bf16=False, save_strategy="no", disable_tqdm=True, activation_checkpointing=False,
    )  # fmt: skip
    trainer = trl.DPOTrainer(model=load("policy-hf"), ref_model=load("reference-hf"), args=args,
                             train_dataset=datasets.Dataset.from_list(dataset),
                             processing_class=tokenizer)  # fmt: skip
    trainer.train()
    return trainer, trainer.state.log_history[0]


def check_same_tokens(trainer, prefs, tokenizer) -> None:
    """TRL's prompt and answer ids are ours, pair by pair (so it counts exactly our answer tokens)."""
    ours = encode_pairs(read_preferences(prefs).pairs, tokenizer, 64)
    for i, row in enumerate(trainer.train_dataset):
        for side in ("chosen", "rejected"):
            sequence = getattr(ours, side)[i]
            ids, start = ours.sequences[sequence].tolist(), ours.answer_starts[sequence]
            assert row["prompt_ids"] == ids[:start], f"pair {i}: prompt ids differ"
            assert row[f"{side}_ids"] == ids[start:], f"pair {i}: {side} ids differ"


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_first_step_loss_and_figures_match_trl(exported, tmp_path, loss):
    root, prefs, tokenizer = exported
    ours = our_first_step(root, prefs, loss, tmp_path)
    trainer, theirs = trl_first_step(root, loss, tmp_path)
    check_same_tokens(trainer, prefs, tokenizer)
    at_reference = math.log(2) if loss == "sigmoid" else 1 / (4 * 0.1**2)
    assert abs(ours["loss"] - at_reference) > 0.05  # the policy differs from the reference
    assert abs(theirs["loss"] - ours["loss"]) < 1e-5, (theirs["loss"], ours["loss"])
    for name in FIGURES:
        assert theirs[name] == pytest.approx(ours[name], abs=1e-4), name
    assert theirs["rewards/accuracies"] == ours["rewards/accuracies"]
