"""Never lose a run: SIGKILL mid-run, SIGTERM, and resume reproduce the uninterrupted loss curve exactly.

Each run is a fresh interpreter, as after a real crash. The kill comes from inside the run at a chosen
step (a patched logging method sends the signal to its own process), so the test is deterministic.
"""

from __future__ import annotations

import pytest
from support.training import (
    check,
    eval_losses,
    run_python,
    tiny_corpus,
    tiny_overrides,
    train_losses,
)

from scratchlm.train import checkpoint as ckpt
from scratchlm.train import load_pretrain_config, pretrain
from scratchlm.train.run_dir import RunDir, read_metrics

RUN = """
import os, signal, sys
from scratchlm.train.metrics import RunLog
overrides, out, signal_at, signame = {overrides!r}, {out!r}, {signal_at!r}, {signame!r}
if signal_at:
    original = RunLog.train
    def log_then_signal(self, record, *args):
        step = record["step"]
        original(self, record, *args)
        if step == signal_at:
            os.kill(os.getpid(), getattr(signal, signame))
    RunLog.train = log_then_signal
from scratchlm.cli import main
if {resume!r}:
    sys.exit(main(["pretrain", "--out", out, "--resume"]))  # the config comes from RUN/config.yaml
cfg_args = [a for o in overrides for a in ("--set", o)]
sys.exit(main(["pretrain", "--out", out, *cfg_args]))
"""


def _run(overrides, out, *, signal_at=0, signame="SIGKILL", resume=False):
    code = RUN.format(overrides=overrides, out=str(out), signal_at=signal_at, signame=signame, resume=resume)
    return run_python(code)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory)


def test_sigkill_sigterm_and_resume_give_the_uninterrupted_curve(corpus, tmp_path):
    overrides = tiny_overrides(corpus, steps=12)  # checkpoints every 4 steps, dropout on
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    # The reference runs in this process (one thread, like the subprocesses): same arithmetic.
    pretrain(load_pretrain_config(None, overrides), whole, say=lambda *_: None)

    killed = _run(overrides, broken, signal_at=6)  # SIGKILL: no chance to save; step_4 is the newest
    assert killed.returncode == -9
    assert [s for s, _ in RunDir(broken).checkpoints()] == [4]
    assert max(s for s, _ in train_losses(broken)) == 6  # steps 5 and 6 were logged, then lost

    termed = _run(overrides, broken, signal_at=9, signame="SIGTERM", resume=True)
    check(termed, 130)  # SIGTERM: a checkpoint at the step it arrived, then exit
    assert "stopped by SIGTERM at step 9" in termed.stdout + termed.stderr
    assert ckpt.verify_checkpoint(broken / "checkpoints" / "step_9") is None
    assert not (broken / "final").exists()

    check(_run(overrides, broken, resume=True))
    assert train_losses(broken) == train_losses(whole)  # value for value, steps 1..12
    assert eval_losses(broken) == eval_losses(whole)
    assert len(train_losses(whole)) == 12 and (broken / "final" / "model.safetensors").is_file()


def test_curriculum_resume_across_the_phase_switch_gives_the_uninterrupted_curve(corpus, tmp_path):
    # Context 8 for steps 1-6, then 16 (the model's) for 7-12. The kill leaves step_4, in the short
    # phase, so the first resumed run crosses into the long phase; the second resumes inside it.
    curriculum = {"data.short_context": 8, "data.short_context_until": 0.5}
    overrides = tiny_overrides(corpus, steps=12, **curriculum)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    pretrain(load_pretrain_config(None, overrides), whole, say=lambda *_: None)
    contexts = [r["context"] for r in read_metrics(whole / "metrics.jsonl", "train")]
    assert contexts == [8] * 6 + [16] * 6

    assert _run(overrides, broken, signal_at=6).returncode == -9
    assert [s for s, _ in RunDir(broken).checkpoints()] == [4]
    check(_run(overrides, broken, signal_at=9, signame="SIGTERM", resume=True), 130)
    check(_run(overrides, broken, resume=True))
    assert train_losses(broken) == train_losses(whole)
    assert eval_losses(broken) == eval_losses(whole)
    assert [r["context"] for r in read_metrics(broken / "metrics.jsonl", "train")] == contexts
