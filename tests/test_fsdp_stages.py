"""FSDP beyond pretraining: the SFT, DPO and reward-model objectives train under `parallel: fsdp` on 2
processes what they train in 1 (the trainer core shards; the objectives only slice their batches), and
the final folder is written whole from the shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.training import check, sets, torchrun, train_losses
from test_dpo import _settings as _dpo_settings
from test_dpo import setup as setup  # noqa: F401 (the fixture)
from test_finetune_sft import _sft_settings
from test_finetune_sft import base as base  # noqa: F401 (the fixture)
from test_reward_model import base as reward_base  # noqa: F401 (the fixture)
from test_reward_model import settings as reward_settings

from scratchlm.align.reward import load_reward_model
from scratchlm.cli import main
from scratchlm.model.folder import load_model

STEPS = 6


def one_then_two(command: list[str], settings: list[str], root: Path) -> None:
    """The same run on 1 process and on 2 FSDP processes: equal losses, equal final weights."""
    assert main([*command, "--out", str(root / "one"), *sets(settings)]) == 0
    check(torchrun(2, [*command, "--out", str(root / "fsdp"), *sets([*settings, "parallel=fsdp"])]))
    one, two = train_losses(root / "one"), train_losses(root / "fsdp")
    assert [s for s, _ in two] == list(range(1, STEPS + 1))
    for (step, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, abs=1e-5), step
    assert one[-1][1] < one[0][1]  # it learned: matching a flat curve would prove little
    load = load_reward_model if command[0] == "reward" else load_model
    whole, gathered = (
        load(root / "one" / "final")[0].state_dict(),
        load(root / "fsdp" / "final")[0].state_dict(),
    )
    assert set(gathered) == set(whole)
    for name, tensor in whole.items():  # a reward model's head too: it is written apart from the body
        torch.testing.assert_close(gathered[name], tensor, atol=1e-5, rtol=0, msg=name)


def test_sft_under_fsdp_on_two_processes_matches_one(base, tmp_path):  # noqa: F811
    # fp32 throughout (bf16 autocast or bf16 Newton-Schulz round the 1- and 2-rank sums apart by ~1e-4)
    exact = {"precision": "fp32", "optim.muon_ns_dtype": "float32"}
    settings = _sft_settings(base, STEPS, **{"data.batch_size": 8, "checkpoint.every": STEPS, **exact})
    one_then_two(["sft"], settings, tmp_path)


def test_dpo_under_fsdp_on_two_processes_matches_one(setup, tmp_path):  # noqa: F811
    policy, prefs = setup
    one_then_two(["dpo"], _dpo_settings(policy, prefs, STEPS, **{"checkpoint.every": STEPS}), tmp_path)


def test_the_reward_model_under_fsdp_on_two_processes_matches_one(reward_base, tmp_path):  # noqa: F811
    values = reward_settings(reward_base, STEPS, **{"data.batch_size": 4, "checkpoint.every": STEPS})
    one_then_two(["reward", "train"], values, tmp_path)


@pytest.mark.parametrize("stage", ["ppo", "grpo", "rloo"])
@pytest.mark.parametrize("mode", ["fsdp", "deepspeed"])
def test_rollout_stages_refuse_sharding_in_one_line(stage, mode, capsys):
    """Their ranks decode different numbers of steps, and a sharded forward is a collective: it would hang."""
    needs = {
        "ppo": ["--policy", "p", "--reward", "r", "--prompts", "task:arithmetic"],
        "grpo": [],
        "rloo": [],
    }
    code = main([stage, "--out", "unused", *needs[stage], "--set", "policy=p", "--set", f"parallel={mode}"])
    assert code == 2
    assert f"parallel {mode} is not supported" in capsys.readouterr().err
