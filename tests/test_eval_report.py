"""The report card, run comparison, and the eval/report/compare commands, on fabricated run folders."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml
from test_eval_lm import TEXT, tiny_setup  # noqa: F401

from scratchlm.cli import main
from scratchlm.eval import append_benchmark, report
from scratchlm.eval.compare import compare
from scratchlm.eval.lm import evaluate_text
from scratchlm.model.folder import save_model


def make_run(folder, losses=(4.0, 3.0, 2.5, 2.2), seed=0):
    """A run folder as training writes it: config.yaml, metrics.jsonl, final/ model folder."""
    folder.mkdir(parents=True)
    model, tok = tiny_setup(context_length=16, seed=seed)
    save_model(folder / "final", model, tok)
    (folder / "config.yaml").write_text(yaml.safe_dump({"data": {"corpus": "shakespeare"}, "seed": seed}))
    records = []
    for i, loss in enumerate(losses, 1):
        records.append(
            {
                "kind": "train",
                "step": 10 * i,
                "tokens": 640 * i,
                "elapsed_s": 1.5 * i,
                "loss": loss,
                "lr": 1e-3 * i,
                "tokens_per_s": 420.0,
                "mfu": 0.1,
            }
        )
        if i % 2 == 0:
            records.append(
                {
                    "kind": "eval",
                    "step": 10 * i,
                    "tokens": 640 * i,
                    "elapsed_s": 1.5 * i,
                    "val_loss": loss + 0.1,
                    "val_bpb": (loss + 0.1) / 0.69,
                    "sample": f"ROMEO: sample at step {10 * i}",
                }
            )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder, model, tok


def test_report_has_plots_tables_samples_and_keeps_later_evaluations(tmp_path):
    run, _, tok = make_run(tmp_path / "run")
    before = (run / "metrics.jsonl").read_text()
    append_benchmark(run, {"next_line": {"acc": 0.5, "acc_centered": 1 / 3}}, ckpt=run)
    append_benchmark(run, {"shuffled": {"acc": 0.75}})
    after = (run / "metrics.jsonl").read_text()
    assert after.startswith(before)  # appended, nothing of the training record lost
    records = [json.loads(line) for line in after.splitlines()]
    assert [r["kind"] for r in records[-2:]] == ["benchmark", "benchmark"]
    assert records[-1]["step"] == 40 and records[-1]["tokens"] == 2560  # the run's last step (final/)

    paths = report(run)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    for name in ("loss_vs_tokens", "loss_vs_time", "lr", "tokens_per_s"):
        png = run / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name}.png)" in md
    assert page.count("data:image/png;base64,") == 4  # standalone: plots inside the page
    assert "| 40 | 2.3 | 3.333 |" in md  # the evaluation table
    assert "next_line" in md and "shuffled" in md and "acc 0.75" in md  # both later benchmarks
    assert "ROMEO: sample at step 40" in md and "corpus: shakespeare" in md
    assert f"| tokenizer (final/tokenizer) | {tok.fingerprint()} |" in md and "| torch |" in md
    assert "| data: shakespeare (source bytes) |" in md and "| weights (final/model.safetensors) |" in md
    assert "<table>" in page and "ROMEO: sample at step 40" in page


def test_compare_puts_runs_in_one_table_and_one_plot(tmp_path):
    a, _, _ = make_run(tmp_path / "a", losses=(4.0, 3.0))
    b, _, _ = make_run(tmp_path / "b", losses=(4.0, 2.0, 1.5, 1.2), seed=1)
    append_benchmark(b, {"next_line": {"acc": 0.5, "acc_centered": 1 / 3}})
    result = compare([a, b], tmp_path / "cmp")
    assert result["paths"]["plot"].read_bytes()[:4] == b"\x89PNG"
    rows = {row["run"]: row for row in result["rows"]}
    assert rows["a"]["val_loss"] == pytest.approx(3.1) and rows["b"]["val_loss"] == pytest.approx(1.3)
    assert (
        rows["b"]["next_line acc_centered"] == pytest.approx(1 / 3)
        and "next_line acc_centered" not in rows["a"]
    )
    assert "| a |" in result["paths"]["markdown"].read_text()


def test_cli_eval_text_tasks_and_report(tmp_path, capsys):
    run, model, tok = make_run(tmp_path / "run")
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    assert main(["eval", "--ckpt", str(run), "--text", str(text), "--stride", "8", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["text:text.txt"]
    want = evaluate_text(model, tok, TEXT, stride=8)
    assert got["bpb"] == pytest.approx(want["bpb"], rel=1e-6) and got["tokens"] == want["tokens"]

    mc = tmp_path / "mc.jsonl"
    mc.write_text(
        json.dumps({"context": "All:", "choices": ["Speak, speak.", "Resolved."], "gold": 0}) + "\n"
    )
    assert main(["eval", "--ckpt", str(run / "final"), "--tasks", f"mc={mc}", "--run", str(run)]) == 0
    assert "mc " in capsys.readouterr().out
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["kind"] == "benchmark" and set(last["results"]["mc"]) >= {"acc", "acc_norm", "acc_centered"}

    from scratchlm.eval.generation import greedy_until

    (answer,) = greedy_until(model, tok, ["All:"], ["e"], max_new_tokens=4)
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"prompt": "All:", "answer": answer}) + "\n")
    args = ["--tasks", f"gen={gen}", "--stop", "e", "--max-new-tokens", "4", "--json"]
    assert main(["eval", "--ckpt", str(run), *args]) == 0
    assert json.loads(capsys.readouterr().out)["gen"] == {"exact_match": 1.0, "n": 1}

    assert main(["report", str(run)]) == 0
    assert (run / "report" / "report.html").is_file()
    assert main(["compare", str(run), str(run), "--out", str(tmp_path / "cmp")]) == 0
    capsys.readouterr()


def test_cli_mistakes_exit_2_with_one_line(tmp_path, capsys):
    run, _, _ = make_run(tmp_path / "run")
    assert main(["eval", "--ckpt", str(tmp_path / "nope"), "--text", "x.txt"]) == 2
    assert main(["eval", "--ckpt", str(run), "--text", str(tmp_path / "missing.txt")]) == 2
    assert main(["eval", "--ckpt", str(run), "--tasks", "squad=x.jsonl"]) == 2
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("scratchlm: error:") for line in err)


def test_benchmark_record_takes_the_step_of_the_evaluated_model(tmp_path):
    run, model, tok = make_run(tmp_path / "run")  # last logged training step: 40
    save_model(run / "final", model, tok, extra={"step": 45, "tokens": 2880})
    assert append_benchmark(run, {"t": {"acc": 1.0}}, ckpt=run)["step"] == 45
    save_model(run / "checkpoints" / "step_20", model, tok)
    record = append_benchmark(run, {"t": {"acc": 1.0}}, ckpt=run / "checkpoints" / "step_20")
    assert (record["step"], record["tokens"]) == (20, 1280)


def _leftovers(folder, name):
    """`folder/name` and any temporary of a writer of it (`.name.*`)."""
    return sorted(p.name for p in folder.iterdir() if p.name == name or p.name.startswith(f".{name}."))


def test_a_report_that_fails_midway_leaves_no_folder_and_keeps_an_old_one(tmp_path, monkeypatch):
    report_module = importlib.import_module(
        "scratchlm.eval.report"
    )  # `scratchlm.eval.report` is the function

    run, _, _ = make_run(tmp_path / "run")
    real_plot, calls = report_module._plot, []

    def plot_then_fail(path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 1:  # the first plot is written, then the second fails
            raise RuntimeError("injected plotting failure")
        return real_plot(path, *args, **kwargs)

    monkeypatch.setattr(report_module, "_plot", plot_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        report(run)
    assert len(calls) == 2 and _leftovers(run, "report") == []

    monkeypatch.setattr(report_module, "_plot", real_plot)
    paths = report(run)
    (run / "report" / "notes.txt").write_text("mine")  # a file of the user's in the folder stays
    before = {p.name: p.read_bytes() for p in (run / "report").iterdir()}
    calls.clear()
    monkeypatch.setattr(report_module, "_plot", plot_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        report(run)
    assert {p.name: p.read_bytes() for p in (run / "report").iterdir()} == before  # the old one, whole
    assert _leftovers(run, "report") == ["report"]
    monkeypatch.setattr(report_module, "_plot", real_plot)
    assert report(run) == paths and (run / "report" / "notes.txt").read_text() == "mine"


def test_a_compare_that_fails_midway_leaves_no_folder(tmp_path, monkeypatch):
    compare_module = importlib.import_module("scratchlm.eval.compare")

    a, _, _ = make_run(tmp_path / "a")

    def fail(*args, **kwargs):  # after compare.png and compare.md are written
        raise RuntimeError("injected failure")

    monkeypatch.setattr(compare_module, "to_html", fail)
    with pytest.raises(RuntimeError, match="injected"):
        compare([a], tmp_path / "out" / "cmp")
    assert _leftovers(tmp_path / "out", "cmp") == []


def _without_matplotlib(monkeypatch):
    import sys

    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` of these now raises ImportError


def test_without_matplotlib_report_and_compare_say_what_to_install(tmp_path, monkeypatch, capsys):
    run, _, _ = make_run(tmp_path / "run")
    _without_matplotlib(monkeypatch)
    assert main(["report", str(run)]) == 2
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 2 and "Traceback" not in captured.err
    assert all(line.startswith("scratchlm: error: the plots need matplotlib") for line in err)
    assert all("pip install 'matplotlib>=3.7'" in line for line in err)
    assert _leftovers(run, "report") == [] and _leftovers(tmp_path, "cmp") == []


def test_matplotlib_is_a_dependency_not_an_extra():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert any(dep.split(">")[0].strip() == "matplotlib" for dep in project["dependencies"])
