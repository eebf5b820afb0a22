"""Experiment: a context curriculum for the shakespeare-char recipe (train at 64, finish at a longer context).

The quality metric scores consecutive windows of the model's context length, so the first characters of
every 64-character window are predicted from little context; a model whose context is longer pays that
less often. Training at a long context all along is slower per token of learning (docs/experiments.md,
recipe), so this tries the cheap middle: most of the budget at 64, the last part at `--final-context`
with the same tokens per step, then scores the whole validation split in windows of the final context.

    python experiments/context_curriculum.py --seconds 164 --final-context 256 --final-fraction 0.2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from scratchlm.data import TokenLoader, load_corpus
from scratchlm.eval import evaluate_text
from scratchlm.model import Transformer
from scratchlm.train import load_pretrain_config
from scratchlm.train.config import resolve_model_config
from scratchlm.train.distributed import World
from scratchlm.train.optim import build_optimizer
from scratchlm.train.prepare import prepare_run_data

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=164)
    ap.add_argument("--final-context", type=int, default=256)
    ap.add_argument("--final-fraction", type=float, default=0.2)
    ap.add_argument("--decay-fraction", type=float, default=0.7)
    args = ap.parse_args()
    cfg = load_pretrain_config(ROOT / "configs" / "shakespeare-char.yaml")
    torch.manual_seed(cfg.seed)
    shard_dir, tokenizer = prepare_run_data(
        cfg.data, Path("/tmp/curriculum-run"), World(), say=lambda *a: None
    )
    mcfg = resolve_model_config(dict(cfg.model, context_length=args.final_context), tokenizer.vocab_size)
    model = Transformer(mcfg)
    opt = build_optimizer(model, cfg.optim)
    short, long, batch = 64, args.final_context, cfg.data.batch_size
    phases = [
        TokenLoader(shard_dir, "train", batch, short, seed=cfg.seed),
        TokenLoader(shard_dir, "train", batch * short // long, long, seed=cfg.seed + 1),
    ]
    start, step, warmup = time.perf_counter(), 0, cfg.schedule.warmup_steps
    while (progress := (time.perf_counter() - start) / args.seconds) < 1.0:
        factor = min(1.0, (step + 1) / warmup) * min(1.0, (1.0 - progress) / args.decay_fraction)
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor
        loader = phases[progress >= 1.0 - args.final_fraction]
        x, y = loader.next_batch()
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
    model.eval()
    _, val = load_corpus("shakespeare").split()
    result = evaluate_text(model, tokenizer, val)
    print(
        f"steps {step}, final context {args.final_context} for the last {args.final_fraction:.0%}: "
        f"val loss {result['loss']:.4f} (windows of {args.final_context})"
    )


if __name__ == "__main__":
    main()
