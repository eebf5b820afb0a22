"""What the training tests share: a tiny corpus, a tiny recipe, subprocess and torchrun runs, metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scratchlm.model.folder import load_model
from scratchlm.train.run_dir import read_metrics
from support.paths import ROOT, shakespeare_path


def tiny_corpus(tmp_path_factory) -> Path:
    """The first 60 kB of Tiny Shakespeare (a pangram text when the mirror is absent)."""
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    source = shakespeare_path()
    if source is not None:
        text = source.read_text()[:60_000]
    else:
        text = "The quick brown fox jumps over the lazy dog.\n" * 1500
    path.write_text(text)
    return path


def tiny_overrides(corpus: Path, steps: int = 12, **extra) -> list[str]:
    """A 2-layer, width-32 model on 16-character windows: a step takes milliseconds."""
    settings = {
        "data.corpus": str(corpus),
        "model": "{n_layers: 2, d_model: 32, n_heads: 2, context_length: 16, dropout: 0.1}",
        "data.batch_size": 8,
        "budget.max_steps": steps,
        "eval.every": 4,
        "eval.max_tokens": 512,
        "eval.sample_tokens": 16,
        "checkpoint.every": 4,
        "checkpoint.keep_last": 2,
        "logging.every": 1,
        "logging.progress": "false",
        "logging.tensorboard": "false",
        "precision": "fp32",
        "optim.muon_ns_dtype": "float32",  # bf16 matmuls of tiny matrices are slow on CPU
        **extra,
    }
    return [f"{key}={value}" for key, value in settings.items()]


def run_python(code: str, env_extra: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with the tests' environment (mirror, cache, one thread: the
    tiny models gain nothing from a second one on a shared machine)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests"), **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def torchrun(nproc: int, args: list[str], *, script: Path | None = None, timeout: int = 300):
    """`torchrun --standalone --nproc-per-node=N -m scratchlm ARGS` (or SCRIPT ARGS), one thread each."""
    target = [str(script)] if script else ["-m", "scratchlm"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        cmd + target + args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def weights(folder: Path) -> dict:
    """The tensors of a model folder, by name."""
    return load_model(folder)[0].state_dict()


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl", "train")]


def eval_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["val_loss"]) for r in read_metrics(run_dir / "metrics.jsonl", "eval")]


def check(proc: subprocess.CompletedProcess, code: int = 0) -> None:
    if proc.returncode != code:
        pytest.fail(
            f"exit {proc.returncode} (expected {code}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
