"""SFT speed against TRL's SFTTrainer: optimizer steps per second of our `sft()` and of TRL, in one run.

    python benchmarks/bench_sft.py                          # dialogue task, 4 x 128 model, batch 16, 30 steps
    python benchmarks/bench_sft.py --steps 4 --batch 4      # a smoke run, seconds
    python benchmarks/bench_sft.py --threads 2 --precision bf16

Both train the same random Llama-style model (saved as our model folder and exported with
`scratchlm.interop.hf`) on the same conversations of a built-in task, the first `steps x batch` that fit
the context, each seen once. Both do the same arithmetic: one conversation a row, every row padded to the
context (ours does when not packing; TRL is given `pad_to_multiple_of` the context), the same precision,
AdamW with the same lr, betas, no decay, gradient clip 1.0, constant lr. TRL counts the completion only
(`completion_only_loss` on prompt/completion records, the exported chat template as it is): the tokens
our loss mask counts, with the same first-step loss on the same batch (tests/test_finetune_trl_peer.py).
The two shuffle differently, so their batches differ; the losses printed (first and last step) only show
that both learn alike.

Setup (tokenizing, building rows, loading the model) is left out: steps/s is taken over steps 2..N, from
our metrics' `elapsed_s` and from a TRL callback's clock at the end of each step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import datasets
import torch
import transformers
import trl

from scratchlm.data.chat import render_chat
from scratchlm.data.tasks import get_task
from scratchlm.finetune import load_sft_config, sft
from scratchlm.interop.hf import export_hf
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import save_model
from scratchlm.tokenizer import train_bpe
from scratchlm.train.run_dir import RunDir


def rate(times: list[float]) -> float:
    """Steps per second between the first and the last step's end (the first step warms up)."""
    return (len(times) - 1) / (times[-1] - times[0])


def run_ours(base: Path, data: Path, args, out: Path) -> tuple[float, list[float]]:
    """(steps/s, losses) of `sft()` on the conversations in `data`."""
    settings = {
        "base": str(base), "device": "cpu", "precision": args.precision, "data.tasks": "[]",
        "data.files": f"['{data}']", "data.examples": args.steps * args.batch, "data.batch_size": args.batch,
        "data.packing": "false", "budget.max_time": "", "budget.max_steps": args.steps,
        "optim.name": "adamw", "optim.lr": args.lr, "optim.beta2": 0.999, "optim.weight_decay": 0.0,
        "schedule.kind": "constant", "grad_clip": 1.0, "logging.every": 1, "logging.progress": "false",
        "logging.tensorboard": "false",
    }  # fmt: skip
    sft(load_sft_config(None, [f"{k}={v}" for k, v in settings.items()]), out, say=lambda *_: None)
    records = RunDir(out).read_metrics("train")
    assert [r["step"] for r in records] == list(range(1, args.steps + 1))
    return rate([r["elapsed_s"] for r in records]), [r["loss"] for r in records]


class StepClock(transformers.TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def run_trl(hf_dir: Path, conversations, args, context: int, out: Path) -> tuple[float, list[float]]:
    """(steps/s, losses) of TRL's SFTTrainer on the exported model."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        hf_dir, local_files_only=True, dtype=torch.float32
    )
    records = [{"prompt": c[:-1], "completion": c[-1:]} for c in conversations]
    config = trl.SFTConfig(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=args.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        completion_only_loss=True, packing=False, max_length=None, pad_to_multiple_of=context,
        bf16=args.precision == "bf16", use_cpu=True, activation_checkpointing=False, logging_steps=1,
        save_strategy="no", report_to=[], disable_tqdm=True,
    )  # fmt: skip
    clock = StepClock()
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(records),
                             processing_class=tokenizer, callbacks=[clock])  # fmt: skip
    trainer.remove_callback(transformers.PrinterCallback)  # a dict a step on stdout
    trainer.train()
    assert len(clock.times) == args.steps
    return rate(clock.times), [r["loss"] for r in trainer.state.log_history if "loss" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="dialogue", help="a single-turn built-in task spec")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of each trainer")
    parser.add_argument("--batch", type=int, default=16, help="conversations per step")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary trained on the conversations")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared box)")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the rate is taken from step 2 on)")

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    wanted = args.steps * args.batch
    candidates = get_task(args.task).examples("train", 2 * wanted)
    if any(len(c) != 2 for c in candidates):
        raise SystemExit(f"{args.task}: has multi-turn conversations; TRL's completion loss counts one reply")
    tokenizer = train_bpe([m["content"] for c in candidates for m in c], args.vocab)
    fits = [c for c in candidates if len(render_chat(c, tokenizer)[0]) <= args.context + 1][:wanted]
    if len(fits) < wanted:
        raise SystemExit(f"only {len(fits)} of {len(candidates)} conversations fit --context {args.context}")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=args.context, n_layers=args.layers,
                         d_model=args.d_model, n_heads=args.heads)  # fmt: skip
    model = Transformer(config)
    print(
        f"{args.task}: {wanted} conversations, model {model.num_params() / 1e6:.2f}M params "
        f"({args.layers} x {args.d_model}, context {args.context}), batch {args.batch}, {args.steps} steps, "
        f"{args.precision}, threads {torch.get_num_threads()}, rows padded to {args.context}"
    )

    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        root = Path(tmp)
        save_model(root / "model", model, tokenizer)
        export_hf(model, root / "hf", tokenizer)
        data = root / "conversations.jsonl"
        data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in fits))
        ours, our_losses = run_ours(root / "model", data, args, root / "ours")
        theirs, their_losses = run_trl(root / "hf", fits, args, args.context, root / "trl")

    for name, steps_per_s, losses in (
        ("scratchlm sft()", ours, our_losses),
        ("TRL SFTTrainer", theirs, their_losses),
    ):
        print(f"{name:16s} {steps_per_s:7.2f} steps/s   loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(f"ours / TRL: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
