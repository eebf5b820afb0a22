"""DeepSpeed ZeRO 1, 2 and 3 (2 CPU processes, gloo) train what DDP trains; resume continues; a missing
DeepSpeed or an optimizer it cannot run is one line.

The extra is optional, so without it the training tests skip, saying so; the missing-extra error is
tested either way (DeepSpeed hidden from the import system). Measured on 2 shared cores: each launch
11-20 s, the module 65 s (the very first import of DeepSpeed also builds an extension, about a minute).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import pytest
import torch
from support.training import check, sets, tiny_corpus, tiny_overrides, torchrun, train_losses, weights
from test_fsdp import MODEL

from scratchlm.cli import main
from scratchlm.train import checkpoint as ckpt
from scratchlm.train.run_dir import RunDir

STEPS = 20
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is an optional extra (pip install -e '.[deepspeed]')",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A DDP run and a run per ZeRO stage on the same data, each launched once for the module."""
    corpus = tiny_corpus(tmp_path_factory)
    overrides = tiny_overrides(corpus, steps=STEPS, model=MODEL, **{"optim.name": "adamw"})
    overrides += ["eval.every=8", "checkpoint.every=8"]
    root = tmp_path_factory.mktemp("zero")
    made = {}

    def get(name: str):
        if name not in made:
            extra = ["parallel=ddp"] if name == "ddp" else ["parallel=deepspeed", f"zero_stage={name[-1]}"]
            check(torchrun(2, ["pretrain", "--out", str(root / name), *sets(overrides + extra)]))
            made[name] = root / name
        return made[name]

    return get


@needs_deepspeed
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_match_ddp(runs, stage):
    ddp, zero = runs("ddp"), runs(f"zero{stage}")
    reference, losses = train_losses(ddp), train_losses(zero)
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))
    for (step, a), (_, b) in zip(reference, losses):
        assert b == pytest.approx(a, abs=1e-4), step
    assert reference[-1][1] < reference[0][1] - 0.1  # it learned, so matching is not trivial
    whole, trained = weights(ddp / "final"), weights(zero / "final")  # stage 3: gathered on rank 0
    for name in whole:
        torch.testing.assert_close(trained[name], whole[name], atol=1e-4, rtol=0, msg=name)
    step_16 = RunDir(zero).checkpoint_path(16)
    assert ckpt.layout(step_16) == ckpt.LAYOUT_DEEPSPEED and ckpt.verify_checkpoint(step_16) is None
    optim_states = sorted(p.name for p in (step_16 / "deepspeed" / "state").glob("*optim_states.pt"))
    assert optim_states == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]


@needs_deepspeed
def test_zero_resume_continues_the_run(runs, tmp_path):
    zero = runs("zero2")
    run = tmp_path / "run"
    shutil.copytree(zero, run)
    shutil.rmtree(run / "checkpoints" / "step_20")
    shutil.rmtree(run / "final")
    check(torchrun(2, ["pretrain", "--out", str(run), "--resume"]))
    resumed, uninterrupted = train_losses(run), train_losses(zero)
    assert [s for s, _ in resumed] == list(range(1, STEPS + 1))
    for (step, a), (_, b) in zip(resumed[16:], uninterrupted[16:]):
        assert a == pytest.approx(b, abs=1e-6), step  # the same ranks, the same sums: exact up to 1e-6


def test_missing_deepspeed_and_muon_are_one_line(tmp_path_factory, tmp_path, capsys, monkeypatch):
    corpus = tiny_corpus(tmp_path_factory)
    base = ["pretrain", "--out", str(tmp_path / "run"), *sets(tiny_overrides(corpus, steps=2, model=MODEL))]
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` now fails as if absent
    monkeypatch.setenv("DS_ACCELERATOR", os.environ.get("DS_ACCELERATOR", "cpu"))  # set back afterwards
    for extra, says in [
        (["parallel=deepspeed", "optim.name=adamw"], "needs DeepSpeed, which is not installed"),
        (["parallel=deepspeed", "optim.name=muon"], "cannot run under DeepSpeed"),
        (["parallel=deepspeed", "optim.name=adamw", "zero_stage=4"], "not a ZeRO stage"),
    ]:
        assert main(base + sets(extra)) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "run").exists()
