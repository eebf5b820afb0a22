"""`scratchlm demo`: a 10-second budget end to end, and the offline fallback to pystdlib."""

from __future__ import annotations

import math
import re

import pytest
from support.paths import ROOT, shakespeare_path

import scratchlm.train.demo
from scratchlm.cli import main
from scratchlm.errors import ScratchError
from scratchlm.train.demo import pick_corpus
from scratchlm.train.run_dir import read_metrics


def test_demo_trains_on_time_and_says_what_next(tmp_path, capsys):
    if shakespeare_path() is None:
        pytest.skip("the Tiny Shakespeare mirror ($SCRATCHLM_DATA) is absent and tests stay offline")
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--time",
            "10s",
            "--out",
            str(out),
            "--set",
            "logging.progress=false",
            "--set",
            "logging.every=1",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "validation loss" in printed and "sample:" in printed
    assert f"scratchlm generate --ckpt {out / 'final'}" in printed and f"run folder:   {out}" in printed
    train = read_metrics(out / "metrics.jsonl", "train")
    evals = read_metrics(out / "metrics.jsonl", "eval")
    # It stops on the budget, told by the order of the clock's readings, not by how fast this machine is:
    # every step but the last began (so the one before it ended) inside the 10 s, and the run ended past them.
    steps, seconds = re.search(r"(\d+) steps in (\d+)s", printed).groups()
    assert int(steps) == train[-1]["step"] == len(train) and int(seconds) >= 10
    assert all(record["elapsed_s"] <= 10.0 for record in train[:-1])
    # The final evaluation scores the last step. How far the loss falls in 10 s depends on the machine
    # (8 steps on a busy 2-core box); that the recipe learns is test_pretrain_curve's, on a step budget.
    assert evals[-1]["step"] == train[-1]["step"] and math.isfinite(evals[-1]["val_loss"])
    assert evals[-1]["sample"]
    assert (out / "final" / "model.safetensors").is_file()


def test_offline_without_mirror_falls_back_to_pystdlib(monkeypatch):
    said = []

    def offline(name):
        raise ScratchError(f"cannot download {name}: no network")

    monkeypatch.setattr(scratchlm.train.demo, "fetch", offline)
    assert pick_corpus(said.append) == "pystdlib"
    assert len(said) == 1 and "offline" in said[0] and "pystdlib" in said[0] and "\n" not in said[0]


def test_recipes_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
    from scratchlm.config import recipe_names, resolve_recipe
    from scratchlm.train import load_pretrain_config

    monkeypatch.chdir(tmp_path)  # no configs/ here: the name must find the recipe shipped in the package
    assert "shakespeare-char" in recipe_names()
    assert (
        resolve_recipe("shakespeare-char").read_text()
        == (ROOT / "configs" / "shakespeare-char.yaml").read_text()
    )
    assert load_pretrain_config("shakespeare-char.yaml").data.corpus == "shakespeare"
    local = tmp_path / "shakespeare-char.yaml"  # a user's own file of the same name wins over the shipped one
    local.write_text("budget: {max_steps: 7}\n")
    assert load_pretrain_config("shakespeare-char.yaml").budget.max_steps == 7
    with pytest.raises(ScratchError, match="shipped recipe name.*shakespeare-char"):
        load_pretrain_config("no-such-recipe")
