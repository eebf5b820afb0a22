"""Context curriculum (data.short_context): its settings, the phase switch, old checkpoints' loader state."""

from __future__ import annotations

import json

import pytest
from support.training import tiny_corpus, tiny_overrides, train_losses

from scratchlm.errors import ScratchError
from scratchlm.train import checkpoint as ckpt
from scratchlm.train import load_pretrain_config, pretrain
from scratchlm.train.config import DataConfig, check_short_context
from scratchlm.train.run_dir import RunDir, read_metrics

# The tiny model's context is 16: 8 sequences of 8 tokens a step, then 4 of 16.
CURRICULUM = {"data.short_context": 8, "data.short_context_until": 0.5}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus(tmp_path_factory)


@pytest.mark.parametrize(
    "short, until, message",
    [
        (-8, 0.0, "must be >= 0"),
        (64, 0.0, "go together"),
        (0, 0.5, "go together"),
        (64, 1.0, r"in \(0, 1\)"),
        (64, -0.2, r"in \(0, 1\)"),
    ],
)
def test_settings_are_checked_when_loaded(short, until, message):
    with pytest.raises(ScratchError, match=message):
        DataConfig(short_context=short, short_context_until=until)
    overrides = ["budget.max_steps=1", f"data.short_context={short}", f"data.short_context_until={until}"]
    with pytest.raises(ScratchError, match=message):
        load_pretrain_config(None, overrides)
    DataConfig(short_context=64, short_context_until=0.8)  # both set
    DataConfig()  # neither


def test_short_context_must_divide_the_models():
    on = DataConfig(short_context=64, short_context_until=0.8)
    check_short_context(on, 256)
    check_short_context(DataConfig(), 256)
    for context in (64, 32, 96):  # equal, longer, not a divisor
        with pytest.raises(ScratchError, match="must be shorter than model.context_length .* and divide it"):
            check_short_context(on, context)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"data.short_context": 5}, "divide it"),
        ({"data.batch_size": 7}, "not a whole number of sequences; make data.batch_size a multiple of 2"),
        # 8 rows of 4 tokens split into 4 micro-steps, but the long phase's 2 rows of 16 do not.
        ({"data.short_context": 4, "data.grad_accum": 4}, "long phase's batch .* 2 is not divisible"),
    ],
)
def test_bad_phase_shapes_fail_before_training(corpus, tmp_path, extra, message):
    cfg = load_pretrain_config(None, tiny_overrides(corpus, steps=4, **{**CURRICULUM, **extra}))
    with pytest.raises(ScratchError, match=message):
        pretrain(cfg, tmp_path / "run", say=lambda *_: None)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not RunDir(tmp_path / "run").checkpoints()


def test_phases_switch_at_the_budget_fraction_with_constant_tokens_per_step(corpus, tmp_path):
    cfg = load_pretrain_config(None, tiny_overrides(corpus, steps=8, **CURRICULUM))
    result = pretrain(cfg, tmp_path / "run", say=lambda *_: None)
    train = read_metrics(tmp_path / "run" / "metrics.jsonl", "train")
    # Step s+1 runs at progress s/8: short while s/8 < 0.5, so steps 1-4 at 8 tokens, 5-8 at 16.
    assert [r["context"] for r in train] == [8] * 4 + [16] * 4
    assert [r["tokens"] for r in train] == [64 * s for s in range(1, 9)]  # 8 x 8 = 4 x 16 tokens a step
    assert result.tokens == 8 * 64
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in train)
    # Evaluation scores windows of the model's context; the saved model keeps it.
    assert read_metrics(tmp_path / "run" / "metrics.jsonl", "eval")[-1]["val_loss"] == result.val_loss
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["context_length"] == 16
    state = ckpt.load_state(tmp_path / "run" / "checkpoints" / "step_8")
    assert [
        (s["context_length"], s["batch_size"], s["step"]) for s in state["objective_state"]["phases"]
    ] == [
        (8, 8, 4),
        (16, 4, 4),
    ]


def test_a_checkpoint_resumes_only_with_the_same_phases(corpus, tmp_path):
    run = tmp_path / "run"
    cfg = load_pretrain_config(None, tiny_overrides(corpus, steps=8))
    pretrain(cfg, run, say=lambda *_: None)
    curriculum = load_pretrain_config(None, tiny_overrides(corpus, steps=12, **CURRICULUM))
    with pytest.raises(ScratchError, match=r"1 data phase\(s\) but this config has 2"):
        pretrain(curriculum, run, resume=True, say=lambda *_: None)


def test_micro_batches_follow_each_phases_rows(corpus, tmp_path):
    # grad_accum 2 cuts 8 short rows into 2 x 4 and 4 long rows into 2 x 2: the same rows as one micro-step,
    # so the runs agree up to float summation order in both phases. Dropout off: masks are drawn per call.
    model = "{n_layers: 2, d_model: 32, n_heads: 2, context_length: 16}"
    runs = {}
    for accum in (1, 2):
        extra = {**CURRICULUM, "data.grad_accum": accum}
        cfg = load_pretrain_config(None, tiny_overrides(corpus, steps=6, model=model, **extra))
        pretrain(cfg, tmp_path / f"accum{accum}", say=lambda *_: None)
        runs[accum] = train_losses(tmp_path / f"accum{accum}")
    assert [s for s, _ in runs[2]] == list(range(1, 7))
    assert [x for _, x in runs[2]] == pytest.approx([x for _, x in runs[1]], rel=1e-4, abs=1e-5)
