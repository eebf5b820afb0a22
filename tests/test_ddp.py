"""Data parallelism: 2 processes under torchrun (gloo, CPU) match one process with the same global batch.

The loader gives rank r rows [r*B, (r+1)*B) of the global batch the single process reads whole, and DDP
averages the gradients, so the two runs compute the same updates up to the order of float additions.
Dropout is off: each rank would draw its own masks.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from support.training import (
    ROOT,
    eval_losses,
    tiny_corpus,
    tiny_overrides,
    train_losses,
)

from scratchlm.train import load_pretrain_config, pretrain
from scratchlm.train.run_dir import RunDir


# The curriculum (context 8 for steps 1-3, then 16) gives each rank 4 rows of 8, then 2 rows of 16.
@pytest.mark.parametrize(
    "extra", [{}, {"data.short_context": 8, "data.short_context_until": 0.5}], ids=["plain", "curriculum"]
)
def test_two_processes_match_one_with_the_same_global_batch(tmp_path_factory, tmp_path, extra):
    corpus = tiny_corpus(tmp_path_factory)
    overrides = tiny_overrides(
        corpus, steps=6, **{"model": "{n_layers: 2, d_model: 32, n_heads: 2, context_length: 16}", **extra}
    )
    single, double = tmp_path / "single", tmp_path / "double"
    pretrain(load_pretrain_config(None, overrides), single, say=lambda *_: None)

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "scratchlm",
    ]
    cmd += ["pretrain", "--out", str(double), *[a for o in overrides for a in ("--set", o)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    (one, two) = train_losses(single), train_losses(double)
    assert [s for s, _ in two] == list(range(1, 7))  # one record per step: rank 1 wrote nothing
    assert [s for s, _ in one] == [s for s, _ in two]
    for (step, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5), step
    assert one[-1][1] < one[0][1]  # it learned something, so matching is not trivial
    for (step, a), (_, b) in zip(eval_losses(single), eval_losses(double)):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-5), step
    assert (proc.stdout + proc.stderr).count("step 4: val loss") == 1  # only rank 0 prints
    assert sorted(p.name for p in double.iterdir()) == sorted(p.name for p in single.iterdir())
    assert [s for s, _ in RunDir(double).checkpoints()] == [4, 6]
