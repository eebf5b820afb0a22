"""Schedules: shapes checked against their formulas at known points, and the time-budget behaviour."""

import math

import pytest

from scratchlm.errors import ScratchError
from scratchlm.train.config import BudgetConfig, load_pretrain_config, parse_duration
from scratchlm.train.schedule import ScheduleConfig, lr_factor


def test_cosine_endpoints_midpoint_and_monotone():
    cfg = ScheduleConfig(kind="cosine", min_lr_ratio=0.1)
    assert lr_factor(cfg, 0, 0.0) == pytest.approx(1.0)
    assert lr_factor(cfg, 10, 0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 99, 1.0) == pytest.approx(0.1)
    values = [lr_factor(cfg, i, i / 100) for i in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_is_linear_in_steps_and_multiplies_the_shape():
    cfg = ScheduleConfig(kind="constant", warmup_steps=4)
    assert [lr_factor(cfg, s, 0.0) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    cos = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr_ratio=0.0)
    assert lr_factor(cos, 4, 0.5) == pytest.approx(0.5 * 0.5)


def test_wsd_is_flat_then_linear_down():
    cfg = ScheduleConfig(kind="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert lr_factor(cfg, 5, 0.0) == 1.0 and lr_factor(cfg, 5, 0.8) == 1.0
    assert lr_factor(cfg, 5, 0.9) == pytest.approx(0.5)
    assert lr_factor(cfg, 5, 1.0) == pytest.approx(0.0)
    assert lr_factor(cfg, 5, 7.0) == pytest.approx(0.0)  # progress past the end is clamped


def test_time_progress_drives_the_decay():
    # Two runs at different speeds reach the same lr at the same fraction of a time budget.
    cfg = ScheduleConfig(kind="cosine", min_lr_ratio=0.0)
    budget = parse_duration("150s")
    fast = lr_factor(cfg, 1000, 75.0 / budget)
    slow = lr_factor(cfg, 10, 75.0 / budget)
    assert fast == slow == pytest.approx(0.5)
    assert math.isclose(lr_factor(cfg, 0, 1.0), 0.0, abs_tol=1e-12)


def test_bad_schedule_and_durations_are_user_errors():
    with pytest.raises(ScratchError, match="schedule.kind"):
        ScheduleConfig(kind="linear")
    assert parse_duration("3m") == 180.0 and parse_duration("1.5h") == 5400.0 and parse_duration(90) == 90.0
    with pytest.raises(ScratchError, match="not a duration"):
        BudgetConfig(max_time="soon")
    with pytest.raises(ScratchError, match="no budget"):
        load_pretrain_config(None, [])
    with pytest.raises(ScratchError, match="no budget"):
        load_pretrain_config(None, ["budget.max_time=0"])  # 0 unsets a budget, as for steps and tokens
    cfg = load_pretrain_config(None, ["budget.max_time=150s", "schedule.kind=wsd", "optim.name=adamw"])
    assert cfg.budget.seconds() == 150.0 and cfg.schedule.kind == "wsd" and cfg.optim.name == "adamw"
    with pytest.raises(ScratchError, match="unknown key"):
        load_pretrain_config(None, ["budget.max_steps=3", "data.bacth_size=4"])
