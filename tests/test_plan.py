"""The planner: ZeRO's memory division, Korthikanti et al.'s activations, the fit, tokens and time, each
against the arithmetic written out, and the command line."""

from __future__ import annotations

import json

import pytest

from scratchlm.cli import main
from scratchlm.errors import ScratchError
from scratchlm.model import get_preset
from scratchlm.plan import GPUS, USABLE, activation_bytes, make_plan, parse_gpus, state_bytes_per_param


def test_zero_stages_divide_the_16_bytes_per_parameter():
    assert sum(state_bytes_per_param("ddp", 8).values()) == 16
    assert state_bytes_per_param("zero1", 8) == {"weights": 2, "gradients": 2, "optimizer": 12 / 8}
    assert state_bytes_per_param("zero2", 8) == {"weights": 2, "gradients": 2 / 8, "optimizer": 12 / 8}
    assert (
        sum(state_bytes_per_param("zero3", 8).values()) == sum(state_bytes_per_param("fsdp", 8).values()) == 2
    )
    with pytest.raises(ScratchError, match="--parallel"):
        state_bytes_per_param("tp", 2)


def test_activations_follow_korthikanti_et_al():
    config = get_preset("llama-100m")  # s 2048, h 768, a 12, 12 layers
    s, h, a, layers = 2048, 768, 12, 12
    assert activation_bytes(config, 8, "none") == pytest.approx(s * 8 * h * (34 + 5 * a * s / h) * layers)
    assert activation_bytes(config, 8, "selective") == 34 * s * 8 * h * layers
    assert activation_bytes(config, 8, "full") == 2 * s * 8 * h * layers
    assert activation_bytes(config, 16, "none") == 2 * activation_bytes(config, 8, "none")


def test_the_largest_micro_batch_fits_and_one_more_does_not():
    config = get_preset("llama-100m")
    plan = make_plan(config, gpus="8xH100", parallel="zero2", micro_batch=1)
    budget = GPUS["H100"][1] * USABLE
    assert plan.max_micro_batch > 1
    fits = make_plan(config, gpus="8xH100", parallel="zero2", micro_batch=plan.max_micro_batch)
    over = make_plan(config, gpus="8xH100", parallel="zero2", micro_batch=plan.max_micro_batch + 1)
    assert fits.fits and fits.memory_gb["total"] <= budget < over.memory_gb["total"] and not over.fits
    full = make_plan(config, gpus="8xH100", parallel="zero2", checkpointing="full")
    assert full.max_micro_batch > plan.max_micro_batch  # recomputation buys micro-batch


def test_tokens_time_and_cost():
    config = get_preset("llama-10m")
    one = make_plan(config, gpus="1xA100", mfu=0.5, price_per_gpu_hour=2.0)
    assert one.tokens == one.chinchilla_tokens == 20 * one.params
    want_hours = one.tokens * one.flops_per_token / (312e12 * 0.5) / 3600
    assert one.hours == pytest.approx(want_hours) and one.cost == pytest.approx(2.0 * want_hours)
    eight = make_plan(config, gpus="8xA100", mfu=0.5, tokens=one.tokens)
    assert eight.hours == pytest.approx(one.hours / 8) and eight.gpu_hours == pytest.approx(one.gpu_hours)
    assert parse_gpus("8xH100") == (8, "H100") and parse_gpus("h200") == (1, "H200")
    with pytest.raises(ScratchError, match="COUNTxNAME"):
        parse_gpus("8xTPU")


def test_the_command_line(capsys):
    assert main(["plan", "--preset", "llama-10m", "--gpus", "2xH100", "--parallel", "fsdp", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["gpus"] == 2 and plan["parallel"] == "fsdp" and plan["params"] > 10_000_000
    assert main(["plan", "--config", "shakespeare-char"]) == 0
    assert "parameters" in capsys.readouterr().out
    assert main(["plan", "--preset", "llama-10m", "--gpus", "3xWHAT"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--gpus '3xWHAT'" in err
