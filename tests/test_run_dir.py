"""RunDir: the one owner of a run folder's layout, and `--ckpt` resolution that honours the best pointer."""

from __future__ import annotations

import json

import pytest
from support.training import tiny_corpus, tiny_overrides

from scratchlm.cli import main
from scratchlm.errors import ScratchError
from scratchlm.train import load_pretrain_config, pretrain
from scratchlm.train.run_dir import RunDir, read_metrics, resolve_model_dir, step_of


def _model_folder(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_step_names_and_checkpoint_listing(tmp_path):
    run = RunDir(tmp_path)
    for name in ("step_10", "step_2", ".step_3.host.1.tmp", "step_x", "notes"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
    assert [s for s, _ in run.checkpoints()] == [2, 10]
    assert step_of("a/b/step_7") == 7 and step_of("step_7x") is None and step_of("final") is None


def test_a_run_means_final_then_its_best_then_its_newest_checkpoint(tmp_path):
    run = RunDir(tmp_path / "run")
    for step in (4, 8):
        _model_folder(run.checkpoint_path(step))
    assert resolve_model_dir(run.path) == run.checkpoint_path(8)  # no pointers: the newest
    run.pointers_path.write_text(json.dumps({"last": "checkpoints/step_8", "best": "checkpoints/step_4"}))
    assert resolve_model_dir(run.path) == run.checkpoint_path(4)  # the best, as latest.json says
    _model_folder(run.final)
    assert resolve_model_dir(run.path) == run.final
    assert resolve_model_dir(run.checkpoint_path(8)) == run.checkpoint_path(8)  # a model folder is itself
    for folder in (run.final, run.checkpoint_path(4), run.path):
        assert RunDir.of_model(folder) is None  # no config.yaml or metrics.jsonl: not a run yet
    run.config_path.write_text("data: {corpus: shakespeare}\n")
    for folder in (run.final, run.checkpoint_path(4), run.path):
        assert RunDir.of_model(folder).path == run.path
    with pytest.raises(ScratchError, match="no such folder"):
        resolve_model_dir(tmp_path / "missing")
    with pytest.raises(ScratchError, match="not a model folder"):
        resolve_model_dir(tmp_path)


def test_one_metrics_reader_drops_only_lines_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "eval", "st\n{"kind": "train", "step": 2}\n{"ki')
    assert [r["step"] for r in read_metrics(path, "train")] == [1, 2]
    run = RunDir(tmp_path)
    run.append_record({"kind": "benchmark", "step": 2})  # after a cut line: on a line of its own
    assert [r["kind"] for r in run.read_metrics()] == ["train", "train", "benchmark"]
    run.open_metrics(after_step=1).close()  # a resume from step 1 rewrites the file without the rest
    assert [r["step"] for r in run.read_metrics()] == [1]


def test_a_diverging_run_says_so_and_keeps_the_last_good_checkpoint(tmp_path_factory, tmp_path):
    # lr 1e30 never reaches NaN on the char model; its loss passes 3 x ln(vocab) within a few steps.
    corpus = tiny_corpus(tmp_path_factory)
    cfg = load_pretrain_config(
        None, tiny_overrides(corpus, steps=12, **{"optim.lr": 1e30, "optim.muon_lr": 1e30})
    )
    with pytest.raises(ScratchError, match=r"training diverged: .*(far above|became)"):
        pretrain(cfg, tmp_path / "run", say=lambda *_: None)
    assert not (tmp_path / "run" / "final").exists()


def test_an_unknown_objective_is_one_line(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "run"), "--set", "objective=sft-ish",
                 "--set", "budget.max_steps=1"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "objective 'sft-ish' does not exist" in err and "causal_lm" in err
