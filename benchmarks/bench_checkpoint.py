"""Checkpoint save time as checkpoints accumulate: ours against the pre-refactor way, in the same run.

    python benchmarks/bench_checkpoint.py                 # llama-10m, 16 saves, all kept
    python benchmarks/bench_checkpoint.py --preset llama-1m --saves 30

Each save writes a real checkpoint (model folder, AdamW state, trainer state) through
`scratchlm.train.checkpoint.save_checkpoint` and then prunes through `RunDir.prune`, as the Trainer does.
The peer is what the code did before issue 9 (abf7166): every file of the new checkpoint hashed a second
time after the model folder had hashed it, and pruning re-verified every kept checkpoint (read and hash
each whole), so a save grew with the number kept. Both sides keep every checkpoint, the worst case.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scratchlm.model import Transformer, get_preset
from scratchlm.model.folder import write_model_files
from scratchlm.tokenizer import train_char
from scratchlm.train import checkpoint as ckpt
from scratchlm.train.optim import OptimConfig, build_optimizer
from scratchlm.train.run_dir import RunDir


def one_save(run: RunDir, step: int, model, optimizer, tokenizer, old_way: bool) -> float:
    start = time.perf_counter()
    state = {"step": step, "optimizers": {"model": optimizer.state_dict()}, "rng": ckpt.rng_states()}

    def write(folder: Path):
        files = write_model_files(folder, model, tokenizer, extra={"step": step})["files"]
        return {} if old_way else files  # the old save hashed every file again

    ckpt.save_checkpoint(run.checkpoint_path(step), write, state, {"step": step, "val_loss": None})
    if old_way:  # the old prune verified every kept checkpoint before choosing what to keep
        for _, path in run.checkpoints():
            assert ckpt.verify_checkpoint(path) is None
    run.prune(keep_last=10_000, keep_best=True, is_complete=ckpt.is_complete)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-10m")
    parser.add_argument("--saves", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = train_char(["abcdefghijklmnopqrstuvwxyz .,\n"])
    config = get_preset(args.preset)
    config.vocab_size = max(config.vocab_size, tokenizer.vocab_size)
    model = Transformer(config)
    optimizer = build_optimizer(model, OptimConfig(name="adamw"))
    model(torch.zeros(1, 8, dtype=torch.long)).sum().backward()
    optimizer.step()  # AdamW state exists: two moments per parameter
    times = {}
    for old_way in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            run = RunDir(tmp)
            times[old_way] = [
                one_save(run, s, model, optimizer, tokenizer, old_way) for s in range(1, args.saves + 1)
            ]
            size = sum(f.stat().st_size for f in run.checkpoint_path(1).rglob("*") if f.is_file())
    print(
        f"{args.preset}: {model.num_params():,} parameters, {size / 1e6:.1f} MB a checkpoint, "
        f"{args.saves} saves"
    )
    print(f"{'saves':>9} {'ours (s)':>9} {'old way (s)':>12} {'old / ours':>11}")
    quarter = max(1, args.saves // 4)  # medians over a quarter of the saves: fsync times are noisy
    for lo in range(0, args.saves, quarter):
        ours, old = (statistics.median(times[k][lo : lo + quarter]) for k in (False, True))
        print(
            f"{lo + 1:>4}-{min(lo + quarter, args.saves):<4} {ours:>9.3f} {old:>12.3f} {old / ours:>10.1f}x"
        )


if __name__ == "__main__":
    main()
