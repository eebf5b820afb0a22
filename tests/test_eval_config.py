"""`EvalConfig` and `evaluate`: the typed evaluation policy, and `scratchlm eval` derived from it."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from test_eval_lm import TEXT
from test_eval_report import make_run

from scratchlm.cli import build_parser, main
from scratchlm.cli.derive import add_dataclass_arguments, dataclass_from_args
from scratchlm.errors import ScratchError
from scratchlm.eval import EvalConfig, evaluate
from scratchlm.eval.workflow import default_corpus
from scratchlm.model.folder import save_model


def _eval_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["eval"]


def _run_with_corpus(folder: Path, corpus: str | Path):
    """A run folder (make_run's) whose config.yaml records `corpus`."""
    run, model, tok = make_run(folder)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"corpus": str(corpus)}}))
    return run, model, tok


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT * 5, encoding="utf-8")  # one document: its last tenth is the validation split
    return path


def test_every_eval_config_field_has_a_flag_listed_in_help(capsys):
    flags = {a.dest: a.option_strings for a in _eval_parser()._actions}
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    help_text = capsys.readouterr().out
    for f in dataclasses.fields(EvalConfig):
        assert f.name in flags, f"EvalConfig.{f.name} has no scratchlm eval flag"
        assert flags[f.name] == ["--" + f.name.replace("_", "-")]
        assert flags[f.name][0] in help_text, f.name
        assert f.metadata.get("help"), f"EvalConfig.{f.name} has no help text"
    assert "--json" in help_text and "examples per built-in task (default 200)" in help_text
    assert "--tasks TASK [TASK ...]" in help_text and "--stop STR [STR ...]" in help_text


def test_eval_flags_build_the_config():
    parser = _eval_parser()
    assert dataclass_from_args(EvalConfig, parser.parse_args(["--ckpt", "m"])) == EvalConfig(ckpt="m")
    argv = ["--ckpt", "m", "--corpus", "c", "--stride", "4", "--tasks", "builtin", "mc=x.jsonl", "--n", "7"]
    argv += ["--limit", "3", "--stop", "a\\n", ".", "--max-new-tokens", "5", "--run", "r", "--device", "cpu"]
    got = dataclass_from_args(EvalConfig, parser.parse_args([*argv, "--batch-size", "2"]))
    want = EvalConfig(
        Path("m"), None, "c", 4, ["builtin", "mc=x.jsonl"], 7, 3, ["a\n", "."], 5, Path("r"), "cpu", 2
    )
    assert got == want
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --ckpt is required


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"text": "a.txt", "corpus": "b"}, "not both"),
        ({"stride": 0}, "stride"),
        ({"n": 0}, "n \\(examples"),
        ({"limit": 0}, "limit"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"batch_size": 0}, "batch_size"),
        ({"stop": [""]}, "stop string is empty"),
        ({"ckpt": ""}, "ckpt is empty"),
    ],
)
def test_config_refuses_bad_values_in_one_line(kwargs, words):
    with pytest.raises(ScratchError, match=words) as info:
        EvalConfig(**{"ckpt": "m", **kwargs})
    assert "\n" not in str(info.value)


def test_api_and_cli_give_the_same_figures(tmp_path, corpus_file, capsys):
    run, _, _ = _run_with_corpus(tmp_path / "run", corpus_file)
    mc = tmp_path / "mc.jsonl"
    mc.write_text(
        json.dumps({"context": "All:", "choices": ["Speak, speak.", "Resolved."], "gold": 0}) + "\n"
    )
    cases = [
        ([], {}),  # the run's own corpus, from its config.yaml
        (["--stride", "8", "--batch-size", "3"], {"stride": 8, "batch_size": 3}),
        (
            ["--corpus", str(corpus_file), "--tasks", f"mc={mc}"],
            {"corpus": str(corpus_file), "tasks": [f"mc={mc}"]},
        ),
    ]
    for argv, kwargs in cases:
        assert main(["eval", "--ckpt", str(run), "--device", "cpu", "--json", *argv]) == 0
        from_cli = json.loads(capsys.readouterr().out)
        from_api = evaluate(EvalConfig(ckpt=run, device="cpu", **kwargs))
        assert from_cli == from_api
        assert f"val:{corpus_file}" in from_api and from_api[f"val:{corpus_file}"]["tokens"] > 0
    assert set(from_api) == {f"val:{corpus_file}", "mc"}
    # Tasks alone score no text: the recorded corpus only feeds built-in tasks.
    assert set(evaluate(EvalConfig(ckpt=run, device="cpu", tasks=[f"mc={mc}"]))) == {"mc"}


def test_a_missing_ckpt_is_named_in_one_line(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    assert main(["eval", "--ckpt", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "nothing to evaluate" not in err
    with pytest.raises(ScratchError, match="no such folder"):
        evaluate(EvalConfig(ckpt=missing))


def test_a_model_outside_any_run_needs_something_to_evaluate(tmp_path, capsys):
    run, model, tok = make_run(tmp_path / "run")
    save_model(tmp_path / "alone", model, tok)
    assert main(["eval", "--ckpt", str(tmp_path / "alone")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing to evaluate" in err and "--text FILE" in err


def test_default_corpus_is_found_from_the_run_its_final_and_its_checkpoints(tmp_path, corpus_file, capsys):
    run, model, tok = _run_with_corpus(tmp_path / "run", corpus_file)
    save_model(run / "checkpoints" / "step_3", model, tok)
    for ckpt in (run, run / "final", run / "checkpoints" / "step_3"):
        assert default_corpus(ckpt) == str(corpus_file), ckpt
    other, _, _ = _run_with_corpus(tmp_path / "other", "elsewhere")
    assert default_corpus(run / "final", run=other) == "elsewhere"  # --run RUN wins
    (other / "config.yaml").unlink()
    assert default_corpus(run / "final", run=other) == str(corpus_file)  # ... when it records one

    assert main(["eval", "--ckpt", str(run / "checkpoints" / "step_3"), "--device", "cpu", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == [f"val:{corpus_file}"]


def test_a_run_without_metrics_is_refused_before_the_work(tmp_path, corpus_file, monkeypatch):
    run, _, _ = _run_with_corpus(tmp_path / "run", corpus_file)
    import scratchlm.eval.checkpoint as checkpoint

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(checkpoint, "load_checkpoint", no_load)
    with pytest.raises(ScratchError, match="no metrics.jsonl"):
        evaluate(EvalConfig(ckpt=run, run=tmp_path))


@dataclasses.dataclass
class _Paths:
    where: Path
    names: list[str] = dataclasses.field(default_factory=list, metadata={"nargs": "+", "metavar": "NAME"})
    out: Path | None = dataclasses.field(default=None, metadata={"help": "out"})


def test_derive_handles_required_path_and_several_valued_fields():
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, _Paths)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert dataclass_from_args(_Paths, parser.parse_args(["--where", "w"])) == _Paths(Path("w"))
    args = parser.parse_args(["--where", "w", "--names", "a", "b", "--out", "o"])
    assert dataclass_from_args(_Paths, args) == _Paths(Path("w"), ["a", "b"], Path("o"))
    assert dataclass_from_args(_Paths, parser.parse_args(["--where", "w"])).names == []  # not shared
    text = parser.format_help()
    assert "--names NAME [NAME ...]" in text and "--out PATH" in text and "(default" not in text
