"""FSDP2: 2 sharded processes (gloo, CPU) match one process; distributed checkpoints reshard, export, and are
never taken for complete when half-written; bad launches are one line.

As in test_ddp.py, the loader gives each rank its rows of the one global batch and dropout is off, so the
runs differ only in the order of float additions (measured: under 1e-6 on the loss over 20 steps).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from support.training import (
    check,
    eval_losses,
    sets,
    tiny_corpus,
    tiny_overrides,
    torchrun,
    train_losses,
    weights,
)

from scratchlm.cli import main
from scratchlm.train import checkpoint as ckpt
from scratchlm.train import load_pretrain_config, pretrain
from scratchlm.train.run_dir import RunDir

STEPS = 20
MODEL = "{n_layers: 2, d_model: 32, n_heads: 2, context_length: 16, dropout: 0.0}"

# Rank 0 dies inside the save of step 16, after every rank's shards are written and before the manifest.
KILL_IN_SAVE = """
import os, signal, sys
from scratchlm.train import checkpoint
finish = checkpoint.finish_checkpoint
def finish_or_die(tmp, hashes, state, meta):
    if meta["step"] == 16:
        os.kill(os.getpid(), signal.SIGKILL)
    finish(tmp, hashes, state, meta)
checkpoint.finish_checkpoint = finish_or_die
from scratchlm.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(overrides, folder with single/ and fsdp/) per optimizer, each trained once for the module."""
    corpus = tiny_corpus(tmp_path_factory)
    made = {}

    def get(optimizer: str):
        if optimizer not in made:
            root = tmp_path_factory.mktemp(optimizer)
            overrides = tiny_overrides(corpus, steps=STEPS, model=MODEL, **{"optim.name": optimizer})
            overrides += ["eval.every=8", "checkpoint.every=8"]  # checkpoints 8, 16, 20; keep_last 2
            pretrain(load_pretrain_config(None, overrides), root / "single", say=lambda *_: None)
            fsdp = ["pretrain", "--out", str(root / "fsdp"), *sets(overrides + ["parallel=fsdp"])]
            check(torchrun(2, fsdp))
            made[optimizer] = (overrides, root)
        return made[optimizer]

    return get


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_fsdp_processes_match_one(runs, optimizer):
    _, root = runs(optimizer)
    single, fsdp = root / "single", root / "fsdp"
    one, two = train_losses(single), train_losses(fsdp)
    assert [s for s, _ in two] == list(range(1, STEPS + 1))  # one record a step: rank 1 wrote none
    for (step, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, abs=1e-5), step
    assert one[-1][1] < one[0][1] - 0.1  # it learned, so matching is not trivial
    for (step, a), (_, b) in zip(eval_losses(single), eval_losses(fsdp)):
        assert b == pytest.approx(a, abs=1e-5), step
    # final/ is gathered from the shards into an ordinary model folder, equal to the one process's.
    whole, gathered = weights(single / "final"), weights(fsdp / "final")
    assert whole.keys() == gathered.keys()
    for name in whole:
        torch.testing.assert_close(gathered[name], whole[name], atol=1e-5, rtol=0, msg=name)
    # Each checkpoint is a distributed one: every rank wrote its own shards.
    for step, path in RunDir(fsdp).checkpoints():
        assert ckpt.layout(path) == ckpt.LAYOUT_DCP, step
        assert sorted(p.name for p in (path / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert ckpt.verify_checkpoint(path) is None


def test_half_written_checkpoint_is_ignored_and_resume_reshards_to_one_rank(runs, tmp_path):
    overrides, root = runs("muon")  # momentum buffers make a lost optimizer state show in the losses
    run = tmp_path / "run"
    script = tmp_path / "kill_in_save.py"
    script.write_text(KILL_IN_SAVE)
    killed = torchrun(2, ["pretrain", "--out", str(run), *sets(overrides + ["parallel=fsdp"])], script=script)
    assert killed.returncode != 0
    leftovers = [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".step_16.")]
    assert leftovers and list(leftovers[0].glob("dcp/*.distcp"))  # the shards were written, then the kill
    assert [s for s, _ in RunDir(run).checkpoints()] == [8]  # the half-written step 16 is not listed

    check(torchrun(1, ["pretrain", "--out", str(run), "--resume"]))  # config.yaml says parallel: fsdp
    resumed, uninterrupted, single = (train_losses(p) for p in (run, root / "fsdp", root / "single"))
    assert [s for s, _ in resumed] == list(range(1, STEPS + 1))  # steps 9-20 again, once each
    for (step, a), (_, b), (_, c) in zip(resumed[8:], uninterrupted[8:], single[8:]):
        assert a == pytest.approx(b, abs=1e-5), step
        assert a == pytest.approx(c, abs=1e-5), step
    assert [s for s, _ in RunDir(run).checkpoints()] == [16, 20]
    assert sorted(p.name for p in (run / "checkpoints" / "step_20" / "dcp").glob("*.distcp")) == [
        "__0_0.distcp"
    ]  # saved again by the one rank


def test_export_from_dcp_writes_the_model_folder(runs, tmp_path, capsys):
    _, root = runs("adamw")
    step_20 = root / "fsdp" / "checkpoints" / "step_20"
    out = tmp_path / "exported"
    assert main(["export", "model", "--from-dcp", str(step_20), "--out", str(out)]) == 0
    exported, final = weights(out), weights(root / "fsdp" / "final")
    assert exported.keys() == final.keys()
    for name in final:
        assert torch.equal(exported[name], final[name]), name  # the same numbers, by two routes

    capsys.readouterr()
    plain = root / "single" / "checkpoints" / "step_20"
    assert main(["export", "model", "--from-dcp", str(plain), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a distributed checkpoint" in err


def test_bad_launches_are_one_line(tmp_path_factory, tmp_path, capsys):
    corpus = tiny_corpus(tmp_path_factory)
    base = ["pretrain", "--out", str(tmp_path / "run"), *sets(tiny_overrides(corpus, steps=2, model=MODEL))]
    for extra, says in [
        (["parallel=fsdp"], "needs torchrun"),
        (["parallel=zero"], "parallel 'zero' is unknown"),
        (["fsdp_cpu_offload=true"], "fsdp_cpu_offload needs parallel: fsdp"),
    ]:
        assert main(base + sets(extra)) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "run").exists()  # refused before any work

    # Under torchrun the first worker to fail gives the line and exits 2 (the other may be stopped by
    # torchrun before it gets there); torchrun then reports it and exits 1.
    proc = torchrun(2, base + sets(["data.batch_size=7", "parallel=fsdp"]))
    assert proc.returncode == 1
    line = "scratchlm: error: data.batch_size 7 is not divisible by world_size 2 x grad_accum 1"
    assert line in proc.stderr, proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr.split("Root Cause")[1]
    assert proc.stderr.count("Traceback") == 1  # torchrun's own ChildFailedError; none from a worker


def test_a_plain_process_resumes_an_fsdp_checkpoint(runs, tmp_path):
    overrides, root = runs("adamw")
    run = tmp_path / "run"
    shutil.copytree(root / "fsdp", run)
    shutil.rmtree(run / "checkpoints" / "step_20")
    shutil.rmtree(run / "final")
    config = load_pretrain_config(None, ["parallel=auto"], run_dir=run)  # no torchrun: one plain process
    pretrain(config, run, resume=True, say=lambda *_: None)
    resumed, uninterrupted = train_losses(run), train_losses(root / "fsdp")
    assert [s for s, _ in resumed] == list(range(1, STEPS + 1))
    for (step, a), (_, b) in zip(resumed[16:], uninterrupted[16:]):
        assert a == pytest.approx(b, abs=1e-5), step
    assert ckpt.layout(run / "checkpoints" / "step_20") == ckpt.LAYOUT_FOLDER  # saved as this run saves
