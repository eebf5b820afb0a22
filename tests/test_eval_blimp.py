"""BLiMP: the batched scorer against a one-sentence-at-a-time twin, lm-evaluation-harness's multiple_choice
scoring through our plugin on the same local files, the spec, and bad files named by FILE:LINE."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_eval_lm import tiny_tokenizer

from scratchlm.errors import ScratchError
from scratchlm.eval.blimp import pair_loglikelihoods, parse_blimp_spec, read_blimp, score_blimp
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import save_model

# Before `datasets` is imported anywhere: it reads these once, at import (as in test_eval_harness.py).
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

BLIMP = Path(os.environ.get("SCRATCHLM_DATA", "/nonexistent")) / "blimp"
needs_blimp = pytest.mark.skipif(
    not BLIMP.is_dir(), reason="the BLiMP mirror ($SCRATCHLM_DATA/blimp) is absent"
)
PARADIGMS = ("anaphor_gender_agreement", "regular_plural_subject_verb_agreement_1", "wh_island")


def decisive_model(vocab_size: int, seed: int = 0) -> Transformer:
    """A random model with wide weights: its sentence scores differ by nats, not by rounding, so the
    choices of two correct scorers cannot part on float noise."""
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab_size, context_length=192, n_layers=1, d_model=32, n_heads=2)
    model = Transformer(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()  # byte-level BPE: any sentence encodes
    return decisive_model(tok.vocab_size), tok


@pytest.fixture
def small_blimp(tmp_path):
    """The first 30 pairs of three real paradigms."""
    folder = tmp_path / "blimp"
    folder.mkdir()
    for name in PARADIGMS:
        lines = (BLIMP / f"{name}.jsonl").read_text().splitlines()[:30]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def slow_sentence_logprob(model, tok, sentence: str) -> float:
    """log p(" " + sentence | end-of-text): one unpadded forward pass, every token summed by hand."""
    ids = [tok.eot_id, *tok.encode_ordinary(" " + sentence)]
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)  # (T, V)
    return sum(logprobs[t, ids[t + 1]].item() for t in range(len(ids) - 1))


@needs_blimp
def test_batched_scores_equal_one_sentence_at_a_time(setup, small_blimp):
    model, tok = setup
    paradigms = read_blimp(small_blimp)
    pairs = [pair for p in paradigms for pair in p.pairs]
    fast = pair_loglikelihoods(model, tok, pairs, batch_size=7)  # odd batches: rows of mixed lengths
    slow = [(slow_sentence_logprob(model, tok, g), slow_sentence_logprob(model, tok, b)) for g, b in pairs]
    for (fg, fb), (sg, sb) in zip(fast, slow):
        assert fg == pytest.approx(sg, abs=1e-3) and fb == pytest.approx(sb, abs=1e-3)
        assert (fg >= fb) == (sg >= sb)
    scores = score_blimp(model, tok, small_blimp, batch_size=7)
    expected, start = {}, 0
    for p in paradigms:
        mine = slow[start : start + len(p.pairs)]
        start += len(p.pairs)
        expected[p.name] = sum(g >= b for g, b in mine) / len(mine)
    assert scores["per_paradigm"] == expected
    assert scores["mean"] == pytest.approx(sum(expected.values()) / 3)  # over paradigms, not pooled
    assert scores["pairs"] == 90 and set(scores["per_field"]) <= {"syntax", "morphology", "semantics"}


TASK_YAML = """\
task: scratchlm_blimp_{name}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    train: {data}
  cache_dir: {cache}
output_type: multiple_choice
validation_split: train
doc_to_text: ""
doc_to_target: 0
doc_to_choice: "{{{{[sentence_good, sentence_bad]}}}}"
num_fewshot: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@needs_blimp
def test_lm_eval_blimp_through_our_plugin_makes_the_same_choices(setup, small_blimp, tmp_path):
    """lm-eval's blimp task facts (its tasks/blimp/_template_yaml) on the local files, not the hub's."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness (optional extra) not installed")
    import scratchlm.eval.harness  # noqa: F401  (registers "scratchlm")

    model, tok = setup
    save_model(tmp_path / "model", model, tok)
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    for name in PARADIGMS:
        yaml = TASK_YAML.format(name=name, data=small_blimp / f"{name}.jsonl", cache=tmp_path / "hf-cache")
        (tasks_dir / f"{name}.yaml").write_text(yaml)

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(
        model="scratchlm",
        model_args=f"ckpt={tmp_path / 'model'},device=cpu",
        tasks=[f"scratchlm_blimp_{name}" for name in PARADIGMS],
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        batch_size=5,
        random_seed=0,
        log_samples=True,
    )
    ours = score_blimp(model, tok, small_blimp)
    paradigms = {p.name: p for p in read_blimp(small_blimp)}
    for name in PARADIGMS:
        samples = sorted(out["samples"][f"scratchlm_blimp_{name}"], key=lambda s: s["doc_id"])
        lls = pair_loglikelihoods(model, tok, paradigms[name].pairs)
        assert len(samples) == len(lls) == 30
        for sample, (good, bad) in zip(samples, lls):
            (harness_good, _), (harness_bad, _) = sample["resps"][0][0], sample["resps"][1][0]
            assert harness_good == pytest.approx(good, abs=1e-4) and harness_bad == pytest.approx(
                bad, abs=1e-4
            )
            assert sample["acc"] == float(good >= bad)
        assert out["results"][f"scratchlm_blimp_{name}"]["acc,none"] == pytest.approx(
            ours["per_paradigm"][name], abs=1e-12
        )


@needs_blimp
def test_max_pairs_takes_the_first_pairs_of_each_paradigm(small_blimp):
    full = read_blimp(small_blimp)
    cut = read_blimp(small_blimp, max_pairs=4)
    assert [p.pairs for p in cut] == [p.pairs[:4] for p in full]
    first = json.loads((small_blimp / f"{PARADIGMS[0]}.jsonl").read_text().splitlines()[0])
    assert cut[0].pairs[0] == (first["sentence_good"], first["sentence_bad"])
    assert parse_blimp_spec("blimp") == (None, None)
    assert parse_blimp_spec(f"blimp:max_pairs=4,folder={small_blimp}") == (small_blimp, 4)
    with pytest.raises(ScratchError, match="max_pairs must be"):
        parse_blimp_spec("blimp:max_pairs=0")
    with pytest.raises(ScratchError, match="unknown parameter 'pairs'"):
        parse_blimp_spec("blimp:pairs=3")


@needs_blimp
def test_eval_cli_scores_the_mirror_with_a_spec_or_limit(setup, tmp_path, capsys):
    from scratchlm.cli import main

    model, tok = setup
    save_model(tmp_path / "model", model, tok)
    argv = ["eval", "--ckpt", str(tmp_path / "model"), "--device", "cpu", "--json", "--batch-size", "64"]
    assert main([*argv, "--tasks", "blimp:max_pairs=2"]) == 0
    figures = json.loads(capsys.readouterr().out)["blimp:max_pairs=2"]
    n = len(list(BLIMP.glob("*.jsonl")))
    assert (figures["pairs"], figures["paradigms"]) == (2 * n, n) and 0.0 <= figures["acc"] <= 1.0
    assert {"acc:syntax", "acc:morphology", "acc:semantics", "acc:syntax_semantics"} <= set(figures)
    assert main([*argv, "--tasks", "blimp", "--limit", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["blimp"] == figures


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ({"sentence_good": "A cat sleeps."}, "no 'sentence_bad' field"),
        ({"sentence_good": "A cat sleeps.", "sentence_bad": "  "}, "sentence_bad is empty"),
        ({"sentence_good": "", "sentence_bad": "A cat sleep."}, "sentence_good is empty"),
    ],
)
def test_a_bad_blimp_line_is_one_line_naming_file_and_line(setup, tmp_path, capsys, bad_line, message):
    from scratchlm.cli import main

    folder = tmp_path / "blimp"
    folder.mkdir()
    good = {"sentence_good": "The cats sleep.", "sentence_bad": "The cats sleeps.", "field": "morphology"}
    path = folder / "agreement.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad_line) + "\n")
    with pytest.raises(ScratchError, match=f"{path}:3: {message}"):
        read_blimp(folder)
    model, tok = setup
    save_model(tmp_path / "model", model, tok)
    assert main(["eval", "--ckpt", str(tmp_path / "model"), "--tasks", f"blimp:folder={folder}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}:3: {message}" in err


def test_a_missing_folder_or_mirror_is_named(tmp_path, monkeypatch):
    with pytest.raises(ScratchError, match="BLiMP folder .*nope does not exist"):
        read_blimp(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScratchError, match="holds no .jsonl files"):
        read_blimp(tmp_path / "empty")
    monkeypatch.delenv("SCRATCHLM_DATA")
    with pytest.raises(ScratchError, match="SCRATCHLM_DATA is not set"):
        read_blimp()


def test_the_folder_defaults_to_the_mirror(tmp_path, monkeypatch):
    (tmp_path / "blimp").mkdir()
    shutil.copy(__file__, tmp_path / "blimp" / "not_blimp.txt")  # only *.jsonl files are paradigms
    (tmp_path / "blimp" / "p.jsonl").write_text(json.dumps({"sentence_good": "a b", "sentence_bad": "b a"}))
    monkeypatch.setenv("SCRATCHLM_DATA", str(tmp_path))
    (paradigm,) = read_blimp()
    assert (paradigm.name, paradigm.field, paradigm.pairs) == ("p", "", [("a b", "b a")])
