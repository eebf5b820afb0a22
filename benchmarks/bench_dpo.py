"""DPO speed against TRL's DPOTrainer: optimizer steps per second of our `dpo()` and of TRL, in one run.

    python benchmarks/bench_dpo.py                      # dialogue pairs, 4 x 128 model, 16 pairs, 30 steps
    python benchmarks/bench_dpo.py --steps 4 --batch 4  # a smoke run, seconds
    python benchmarks/bench_dpo.py --threads 2 --trl-reference live

Both train the same random Llama-style model (saved as our model folder and exported with
`scratchlm.interop.hf`) with the sigmoid loss, beta 0.1, on the same pairs: a built-in single-turn task's
prompts, its reply chosen over the next conversation's reply, the first `steps x batch` pairs that fit
the context, each seen once. Both do the same arithmetic a step: the policy's forward and backward over
every pair's two sequences, right-padded to the batch's longest, the same precision, AdamW with the same
lr, betas, no decay, gradient clip 1.0, constant lr. The reference's log-probs are computed before the
first step by both (ours always caches them; TRL is given `precompute_ref_log_probs`), so no step runs
the reference; `--trl-reference live` lets TRL run it every step instead, its default.
The two shuffle differently, so their batches differ; the losses printed only show that both learn.

Setup (tokenizing, the reference pass, loading the model) is left out: steps/s is taken over steps 2..N,
from our metrics' `elapsed_s` and from a TRL callback's clock at the end of each step.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import datasets
import torch
import transformers
import trl

from scratchlm.align.dpo_config import load_dpo_config
from scratchlm.align.dpo_objective import dpo
from scratchlm.data.chat import render_chat
from scratchlm.data.tasks import get_task
from scratchlm.interop.hf import export_hf
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import save_model
from scratchlm.tokenizer import train_bpe
from scratchlm.train.run_dir import RunDir


def rate(times: list[float]) -> float:
    """Steps per second between the first and the last step's end (the first step warms up)."""
    return (len(times) - 1) / (times[-1] - times[0])


def pairs_of(task: str, wanted: int, tokenizer, context: int) -> list[dict]:
    """Prompt, its own reply (chosen) and the next conversation's reply (rejected), both fitting `context`."""
    conversations = get_task(task).examples("train", 2 * wanted + 1)
    if any(len(c) != 2 for c in conversations):
        raise SystemExit(f"{task}: has multi-turn conversations; give a single-turn task")
    pairs = []
    for this, following in zip(conversations, conversations[1:]):
        chosen, rejected = this[1]["content"], following[1]["content"]
        fits = all(
            len(render_chat([this[0], {"role": "assistant", "content": a}], tokenizer)[0]) <= context + 1
            for a in (chosen, rejected)
        )
        if fits and chosen != rejected:
            pairs.append({"prompt": this[0]["content"], "chosen": chosen, "rejected": rejected})
    if len(pairs) < wanted:
        raise SystemExit(f"only {len(pairs)} pairs of {task} fit --context {context}")
    return pairs[:wanted]


def run_ours(base: Path, prefs: Path, args, out: Path) -> tuple[float, list[float]]:
    """(steps/s, losses) of `dpo()` on the pairs in `prefs`."""
    settings = {
        "policy": str(base), "prefs": str(prefs), "device": "cpu", "precision": args.precision,
        "loss": "sigmoid", "beta": 0.1, "data.batch_size": args.batch, "data.heldout": 0,
        "budget.max_time": "", "budget.max_steps": args.steps, "optim.name": "adamw", "optim.lr": args.lr,
        "optim.beta2": 0.999, "optim.weight_decay": 0.0, "schedule.kind": "constant", "grad_clip": 1.0,
        "logging.every": 1, "logging.progress": "false", "logging.tensorboard": "false",
    }  # fmt: skip
    dpo(load_dpo_config(None, [f"{k}={v}" for k, v in settings.items()]), out, say=lambda *_: None)
    records = RunDir(out).read_metrics("train")
    assert [r["step"] for r in records] == list(range(1, args.steps + 1))
    return rate([r["elapsed_s"] for r in records]), [r["loss"] for r in records]


class StepClock(transformers.TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def run_trl(hf_dir: Path, pairs: list[dict], args, out: Path) -> tuple[float, list[float]]:
    """(steps/s, losses) of TRL's DPOTrainer on the exported model."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        hf_dir, local_files_only=True, dtype=torch.float32
    )
    records = [{"prompt": [{"role": "user", "content": p["prompt"]}],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]  # fmt: skip
    config = trl.DPOConfig(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        loss_type=["sigmoid"], beta=0.1, max_length=None, bf16=args.precision == "bf16", use_cpu=True,
        precompute_ref_log_probs=args.trl_reference == "precomputed", activation_checkpointing=False,
        logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True,
    )  # fmt: skip
    clock = StepClock()
    trainer = trl.DPOTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(records),
                             processing_class=tokenizer, callbacks=[clock])  # fmt: skip
    trainer.remove_callback(transformers.PrinterCallback)  # a dict a step on stdout
    trainer.train()
    assert len(clock.times) == args.steps
    return rate(clock.times), [r["loss"] for r in trainer.state.log_history if "loss" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="dialogue", help="a single-turn built-in task spec")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each trainer")
    parser.add_argument("--batch", type=int, default=16, help="pairs per step")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary trained on the conversations")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--trl-reference", choices=("precomputed", "live"), default="precomputed",
                        help="TRL's reference log-probs: before training (ours) or every step")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared box)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the rate is taken from step 2 on)")

    torch.set_num_threads(args.threads)
    os.environ["TQDM_DISABLE"] = "1"  # TRL's reference pass shows a bar otherwise
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    wanted = args.steps * args.batch
    texts = [m["content"] for c in get_task(args.task).examples("train", 2 * wanted + 1) for m in c]
    tokenizer = train_bpe(texts, args.vocab)
    pairs = pairs_of(args.task, wanted, tokenizer, args.context)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=args.context, n_layers=args.layers,
                         d_model=args.d_model, n_heads=args.heads)  # fmt: skip
    model = Transformer(config)
    print(
        f"{args.task}: {wanted} pairs, model {model.num_params() / 1e6:.2f}M params ({args.layers} x "
        f"{args.d_model}, context {args.context}), batch {args.batch} pairs, {args.steps} steps, "
        f"{args.precision}, threads {torch.get_num_threads()}, TRL reference {args.trl_reference}"
    )

    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        root = Path(tmp)
        save_model(root / "model", model, tokenizer)
        export_hf(model, root / "hf", tokenizer)
        prefs = root / "prefs.jsonl"
        prefs.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        ours, our_losses = run_ours(root / "model", prefs, args, root / "ours")
        theirs, their_losses = run_trl(root / "hf", pairs, args, root / "trl")

    for name, steps_per_s, losses in (
        ("scratchlm dpo()", ours, our_losses),
        ("TRL DPOTrainer", theirs, their_losses),
    ):
        print(f"{name:16s} {steps_per_s:7.2f} steps/s   loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(f"ours / TRL: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
