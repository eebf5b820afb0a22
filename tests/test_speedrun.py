"""The speedrun: the tiny preset end to end (the integration test), caching by fingerprint, exact resume
after SIGKILL, and its bad input: one line, exit 2, nothing finished lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scratchlm.cli import main
from scratchlm.speedrun import speedrun, stage_record
from scratchlm.speedrun.card import without_wall
from scratchlm.speedrun.recipe import load_recipe

STAGES = ("tokenizer", "pretrain", "sft", "preferences", "reward", "ppo", "dpo", "grpo", "eval", "report")


def ran(lines: list[str]) -> list[str]:
    """The stages a speedrun's progress lines say it ran (not 'done already')."""
    out = []
    for line in lines:
        if line.startswith("[") and "] " in line and "done already" not in line:
            out.append(line.split("] ", 1)[1].split()[0].rstrip(":"))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("speedrun") / "run"
    lines: list[str] = []
    speedrun("tiny", root, say=lines.append)
    assert ran(lines) == list(STAGES)
    return root


def test_tiny_preset_runs_every_stage_and_writes_the_card(tiny):
    for stage in STAGES:
        record = stage_record(tiny, stage)
        assert record is not None and len(record["fingerprint"]) == 64, stage
    card = json.loads((tiny / "report.json").read_text())
    assert set(card["stages"]) == set(STAGES) - {"report"}
    assert card["base"]["val_bpb"] > 0 and card["base"]["params"] > 0
    methods = card["alignment"]["methods"]
    assert {"sft", "best_of_4", "ppo", "dpo"} <= set(methods)
    for name in ("ppo", "dpo", "best_of_4"):
        assert "gain" in methods[name] and methods[name]["gain_se"] >= 0
    assert 0 < card["alignment"]["noise_ceiling"] <= 1
    assert set(card["grpo"]["arithmetic:digits=2,op=+"]) >= {"before", "after", "gain"}
    assert card["answers"] and {"pretrain", "sft", "ppo", "dpo", "grpo"} <= set(card["answers"][0])
    for stage in ("pretrain", "sft", "reward", "ppo", "dpo", "grpo"):
        plan = card["stages"][stage]["plan"]
        assert plan["seconds"] > 0 and plan["dollars"] > 0
    markdown = (tiny / "report.md").read_text()
    assert "## Alignment" in markdown and "report/losses.png" in markdown
    assert (tiny / "report" / "losses.png").stat().st_size > 0
    assert "<img" in (tiny / "report.html").read_text()


def test_chat_and_eval_take_the_best_aligned_model_and_say_which(tiny, capsys):
    best = json.loads((tiny / "report.json").read_text())["best_model"]
    assert best in ("ppo", "dpo")
    assert main(["chat", "--ckpt", str(tiny), "--message", "Good morrow", "--max-new-tokens", "8"]) == 0
    err = capsys.readouterr().err
    assert f"the speedrun's {best} model" in err


def test_a_changed_setting_reruns_that_stage_and_those_after_it_only(tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny, run)
    before = {s: stage_record(run, s) for s in STAGES}
    lines: list[str] = []
    speedrun("tiny", run, resume=True, overrides=["dpo.beta=0.2"], say=lines.append)
    assert ran(lines) == ["dpo", "eval", "report"]
    for stage in ("tokenizer", "pretrain", "sft", "preferences", "reward", "ppo", "grpo"):
        assert stage_record(run, stage) == before[stage], stage
    assert stage_record(run, "dpo")["fingerprint"] != before["dpo"]["fingerprint"]
    assert stage_record(run, "dpo")["config"]["beta"] == 0.2
    lines.clear()
    speedrun("tiny", run, resume=True, overrides=["dpo.beta=0.2"], say=lines.append)
    assert ran(lines) == []  # nothing changed: every stage is done


def test_from_reruns_a_stage_and_until_stops(tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny, run)
    lines: list[str] = []
    speedrun("tiny", run, start="grpo", until="eval", say=lines.append)
    assert ran(lines) == ["grpo", "eval"]


def _watch_and_kill(cmd: list[str], env: dict, triggers: list[Path], timeout: float = 600) -> int:
    """Run `cmd`, SIGKILL it as soon as the first trigger path exists; returns the exit code."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout  # a hang guard only; no pass/fail on speed
    while proc.poll() is None and time.monotonic() < deadline:
        if any(t.exists() for t in triggers):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    return proc.returncode


def test_sigkill_at_several_moments_then_resume_equals_the_uninterrupted_run(tiny, tmp_path):
    """Goal 3: killed in the middle of pretraining (after a checkpoint), as PPO starts and in GRPO, then
    resumed each time, the run's report.json equals the uninterrupted run's (wall times aside)."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the fixture's run is in-process at one thread too
    cmd = [sys.executable, "-m", "scratchlm", "speedrun", "--preset", "tiny", "--out", str(run)]
    kills = [
        run / "pretrain" / "checkpoints" / "step_200",
        run / "ppo" / "started.json",
        run / "grpo" / "checkpoints" / "step_3",
    ]
    for i, trigger in enumerate(kills):
        code = _watch_and_kill(cmd + (["--resume"] if i else []), env, [trigger])
        assert code == -signal.SIGKILL, f"the run ended ({code}) before {trigger} appeared"
        assert not (run / "report.json").exists()
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "(resuming)" in done.stdout  # GRPO carried on from its checkpoint
    ours = without_wall(json.loads((run / "report.json").read_text()))
    reference = without_wall(json.loads((tiny / "report.json").read_text()))
    assert ours == reference


# ---- bad input: one line, exit 2, nothing of the finished stages lost


def _fails(capsys, *argv: str) -> str:
    code = main(["speedrun", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("scratchlm: error:"), err
    return lines[0]


def test_an_unknown_stage_field_or_setting_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert "sft.data.nonsense" in _fails(capsys, "--preset", "tiny", "--out", str(out),
                                         "--set", "sft.data.nonsense=1")  # fmt: skip
    assert "distillation" in _fails(
        capsys, "--preset", "tiny", "--out", str(out), "--set", "distillation.x=1"
    )
    assert "--skip" in _fails(
        capsys, "--preset", "tiny", "--out", str(out), "--skip", "sft"
    )  # preferences needs it
    assert not out.exists()


def test_from_a_stage_whose_inputs_do_not_exist(tmp_path, capsys):
    assert "--from dpo" in _fails(capsys, "--preset", "tiny", "--out", str(tmp_path / "new"), "--from", "dpo")


def test_a_corpus_too_small_for_the_preset(tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text("To be, or not to be, that is the question.\n" * 20)
    line = _fails(capsys, "--preset", "tiny", "--out", str(tmp_path / "run"), "--corpus", str(small))
    assert "training characters" in line and "--preset tiny" in line


def test_a_chat_file_no_reader_knows(tmp_path, capsys):
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"question": "hi", "reply": "hello"}) + "\n")
    line = _fails(capsys, "--preset", "tiny", "--out", str(tmp_path / "run"), "--chat", str(chat))
    assert str(chat) in line
    assert not (tmp_path / "run" / "tokenizer").exists()  # refused before the first stage


def test_out_holding_a_different_speedrun_needs_resume(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny, run)
    before = {s: stage_record(run, s) for s in STAGES}
    line = _fails(capsys, "--preset", "tiny", "--out", str(run), "--set", "seed=1")
    assert "--resume" in line and "different speedrun" in line
    assert "--resume" in _fails(capsys, "--preset", "tiny", "--out", str(run))
    assert {s: stage_record(run, s) for s in STAGES} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert "not a speedrun" in _fails(capsys, "--preset", "tiny", "--out", str(other))


def test_the_recipes_load_and_every_stage_config_checks():
    for preset in ("tiny", "laptop", "gpu"):
        recipe = load_recipe(preset)
        assert recipe.stages == STAGES
        from scratchlm.speedrun.run import Speedrun

        Speedrun(recipe, Path("/nonexistent/run"))  # builds and checks each stage's typed config
