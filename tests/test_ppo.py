"""PPO: each piece against its obvious twin, a toy bandit that must converge, and a tiny RLHF run that
starts at KL 0, trains all its models through the Trainer and resumes exactly after SIGKILL."""

from __future__ import annotations

import json
import math

import pytest
import torch
from support.training import check, run_python, tiny_corpus, tiny_overrides

from scratchlm.align.ppo import (
    AdaptiveKL,
    gae,
    gae_loop,
    kl_per_token,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)
from scratchlm.align.ppo_config import load_ppo_config
from scratchlm.align.ppo_objective import PPO, ppo
from scratchlm.align.reward import RewardModel, save_reward_model
from scratchlm.cli import main
from scratchlm.eval.report import report
from scratchlm.model.folder import load_model
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_char
from scratchlm.train import load_pretrain_config, pretrain
from scratchlm.train.run_dir import RunDir

QUIET = lambda *_: None  # noqa: E731


def _ragged(N=5, R=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, R + 1, (N,), generator=g)
    mask = torch.arange(R)[None, :] < lengths[:, None]
    rewards = torch.randn(N, R, generator=g, dtype=torch.float64)
    values = torch.randn(N, R, generator=g, dtype=torch.float64)
    return rewards, values, mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.0), (0.99, 1.0), (1.0, 1.0)])
def test_vectorised_gae_equals_the_loop(gamma, lam):
    rewards, values, mask = _ragged()
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = gae_loop(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(advantages, want_adv, rtol=0, atol=1e-12)
    torch.testing.assert_close(returns, want_ret, rtol=0, atol=1e-12)
    assert not advantages[~mask].any()  # nothing past an answer's end


def test_lambda_one_gives_monte_carlo_returns_and_lambda_zero_one_step_td():
    rewards, values, mask = _ragged(seed=1)
    _, returns = gae(rewards, values, mask, 1.0, 1.0)
    for row in range(len(mask)):  # G_t = sum of the rewards from t to the end
        n = int(mask[row].sum())
        want = torch.flip(torch.cumsum(torch.flip(rewards[row, :n], [0]), 0), [0])
        torch.testing.assert_close(returns[row, :n], want)
    advantages, _ = gae(rewards, values, mask, 0.9, 0.0)
    row = int(mask.sum(-1).argmax())
    torch.testing.assert_close(advantages[row, 0], rewards[row, 0] + 0.9 * values[row, 1] - values[row, 0])


def test_rewards_put_the_score_on_the_last_real_token_and_kl_everywhere():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    kl = torch.full((2, 4), 0.5)
    rewards = token_rewards(torch.tensor([2.0, -1.0]), kl * mask, mask, beta=0.1)
    want = torch.tensor([[-0.05, -0.05, 1.95, 0.0], [-1.05, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, want)


def test_kl_estimators():
    logp = torch.log(torch.tensor([0.5, 0.2]))
    ref = torch.log(torch.tensor([0.25, 0.4]))
    assert kl_per_token(logp, ref, "k1").tolist() == pytest.approx([math.log(2), math.log(0.5)])
    k3 = kl_per_token(logp, ref, "k3")  # r = ref / pi: (r - 1) - log r
    assert k3.tolist() == pytest.approx([(0.5 - 1) - math.log(0.5), (2 - 1) - math.log(2)])
    assert (k3 >= 0).all() and kl_per_token(ref, ref, "k3").abs().max() == 0


def test_whitening_and_the_clipped_losses_against_plain_arithmetic():
    rewards, _, mask = _ragged(seed=2)
    white = whiten(rewards, mask)
    real = white[mask]
    assert abs(float(real.mean())) < 1e-9 and abs(float(real.std()) - 1) < 1e-6
    logp, old, adv = torch.tensor([[0.0, -1.0]]), torch.tensor([[-0.5, -0.9]]), torch.tensor([[1.0, -2.0]])
    m = torch.ones(1, 2)
    terms = policy_loss(logp, old, adv, m, clip=0.2)
    ratios = [math.exp(0.5), math.exp(-0.1)]
    want = sum(max(-a * r, -a * min(max(r, 0.8), 1.2)) for a, r in zip([1.0, -2.0], ratios))
    assert float(terms.loss_sum) == pytest.approx(want) and terms.clip_fraction == 0.5
    v, v_old, g = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.5]])
    loss, fraction = value_loss(v, v_old, g, m, clip=0.2)
    assert float(loss) == pytest.approx(0.5 * (max(1.0, 1.8**2) + 0.25)) and fraction == 0.5


def test_adaptive_kl_moves_beta_towards_the_target():
    control = AdaptiveKL(beta=0.1, target=6.0, horizon=100.0)
    assert control.update(12.0, 10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped at +0.2
    assert control.update(6.0, 10) == pytest.approx(0.1 * 1.02)  # on target: unchanged
    assert control.update(3.0, 10) < 0.1 * 1.02


def test_ppo_on_a_two_armed_bandit_converges_to_the_better_arm():
    """One-token answers: arm 1 pays 1, arm 0 pays 0. The losses above, a learned baseline, nothing else."""
    torch.manual_seed(0)
    logits = torch.zeros(2, requires_grad=True)
    baseline = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([logits, baseline], lr=0.05)
    for _ in range(60):
        with torch.no_grad():
            arms = torch.multinomial(torch.softmax(logits, -1), 64, replacement=True)
            old = torch.log_softmax(logits, -1)[arms][:, None]  # (64, 1)
            scores = arms.float()
            mask = torch.ones(64, 1, dtype=torch.bool)
            values = baseline.expand(64)[:, None].clone()
            advantages, returns = gae(
                token_rewards(scores, torch.zeros(64, 1), mask, 0.0), values, mask, 1, 0.95
            )
            advantages = whiten(advantages, mask)
        for _ in range(4):
            logp = torch.log_softmax(logits, -1)[arms][:, None]
            pg = policy_loss(logp, old, advantages, mask, 0.2)
            vf, _ = value_loss(baseline.expand(64)[:, None], values, returns, mask, 0.2)
            optimizer.zero_grad()
            ((pg.loss_sum + 0.5 * vf) / 64).backward()
            optimizer.step()
    assert torch.softmax(logits, -1)[1] > 0.95


# ---- a tiny RLHF run through the Trainer ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rlhf(tmp_path_factory):
    """(policy run, reward folder, prompts file): a tiny chat-capable base, a reward model with a random
    (non-zero) head on a copy of it, and prompts its vocabulary spells."""
    root = tmp_path_factory.mktemp("rlhf")
    corpus = tiny_corpus(tmp_path_factory)
    extra = {"data.extra_chars": "0123456789+-=", "data.chat_tokens": "true", "eval.sample_tokens": 0,
             "model": "{n_layers: 2, d_model: 32, n_heads: 2, context_length: 32}"}  # fmt: skip
    pretrain(load_pretrain_config(None, tiny_overrides(corpus, steps=4, **extra)), root / "base", say=QUIET)
    body, tokenizer, _ = load_model(root / "base" / "final")
    torch.manual_seed(1)
    save_reward_model(root / "rm", RewardModel(body), tokenizer)
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"{a}+{b}="}) + "\n" for a in range(6) for b in range(4))
    )
    return root / "base", root / "rm", prompts


def _settings(tiny_rlhf, steps=8, **extra) -> list[str]:
    policy, rm, prompts = tiny_rlhf
    settings = {
        "policy": str(policy), "reward": str(rm), "prompts": str(prompts), "precision": "fp32",
        "ppo.rollout_prompts": 4, "ppo.minibatches": 2, "ppo.epochs": 2, "ppo.max_new_tokens": 6,
        "eval.prompts": 4, "eval.every": 4, "budget.max_steps": steps, "checkpoint.every": 2,
        "checkpoint.keep_last": 3, "logging.every": 1, "logging.progress": "false",
        "logging.tensorboard": "false", "optim.lr": 0.003, "schedule.kind": "constant", **extra,
    }  # fmt: skip
    return [f"{k}={v}" for k, v in settings.items()]


def test_kl_is_zero_at_the_first_rollout_and_its_log_probs_are_a_fresh_forward_pass(tiny_rlhf, tmp_path):
    objective = PPO(load_ppo_config(None, _settings(tiny_rlhf)), torch.device("cpu"), QUIET)
    work = objective.batches(0, 0.0)
    assert abs(work.info["kl"]) < 1e-5  # policy == reference: the k1 sum per answer is 0
    assert work.info["score_std"] > 0  # the random head tells answers apart
    buffer = objective.buffer
    assert buffer.batch.response_mask.any(-1).all()


def test_a_tiny_ppo_run_trains_policy_and_value_and_writes_both(tiny_rlhf, tmp_path):
    result = ppo(load_ppo_config(None, _settings(tiny_rlhf)), tmp_path / "run", say=QUIET)
    records = RunDir(tmp_path / "run").read_metrics("train")
    assert len(records) == 8
    for key in ("score", "kl", "policy/entropy", "policy/clipfrac", "policy/approxkl", "loss/value",
                "explained_variance", "response_length", "tokens_per_s"):  # fmt: skip
        assert key in records[-1], key
    assert {"score", "kl", "sqrt_kl"} <= set(result.evaluation)
    trained, _, _ = load_model(result.final_dir)
    start, _, _ = load_model(tiny_rlhf[0] / "final")
    moved = [
        not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values())
    ]
    assert any(moved)
    value_dir = result.checkpoint_dir / "models" / "value"
    assert (value_dir / "reward_head.safetensors").is_file()
    written = report(tmp_path / "run")  # `scratchlm report RUN`: the reward and KL curves of the run
    for name in ("score", "kl"):
        assert (written["markdown"].parent / f"{name}.png").is_file()
        assert f"{name}.png" in written["markdown"].read_text()


RUN = """
import os, signal, sys
from scratchlm.train.metrics import RunLog
signal_at, out, settings, resume = {signal_at!r}, {out!r}, {settings!r}, {resume!r}
if signal_at:
    original = RunLog.train
    def log_then_kill(self, record, *args):
        step = record["step"]
        original(self, record, *args)
        if step == signal_at:
            os.kill(os.getpid(), signal.SIGKILL)
    RunLog.train = log_then_kill
from scratchlm.cli import main
from scratchlm.eval.report import report
if resume:
    sys.exit(main(["ppo", "--out", out, "--resume"]))
sys.exit(main(["ppo", "--out", out, *[a for s in settings for a in ("--set", s)]]))
"""


def test_resume_after_sigkill_mid_rollout_continues_exactly(tiny_rlhf, tmp_path):
    """Killed at step 3, one step after the step-2 checkpoint, halfway through the first rollout's updates:
    the resumed run must use the saved rollout buffer, and match the whole run's every record."""
    settings = _settings(tiny_rlhf, steps=8)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    check(run_python(RUN.format(signal_at=0, out=str(whole), settings=settings, resume=False)))
    killed = run_python(RUN.format(signal_at=3, out=str(broken), settings=settings, resume=False))
    assert killed.returncode == -9
    assert [s for s, _ in RunDir(broken).checkpoints()] == [2]
    check(run_python(RUN.format(signal_at=0, out=str(broken), settings=settings, resume=True)))
    timing = ("elapsed_s", "tokens_per_s", "mfu", "rollout_s")
    strip = lambda r: {k: v for k, v in r.items() if k not in timing}  # noqa: E731
    for kind in ("train", "eval"):
        got = [strip(r) for r in RunDir(broken).read_metrics(kind)]
        want = [strip(r) for r in RunDir(whole).read_metrics(kind)]
        assert got[-len(want) :] == want if kind == "eval" else got == want
    for folder in ("final", "checkpoints/step_8/models/value"):
        a = (whole / folder / "model.safetensors").read_bytes()
        assert a == (broken / folder / "model.safetensors").read_bytes(), folder
    head = "checkpoints/step_8/models/value/reward_head.safetensors"
    assert (whole / head).read_bytes() == (broken / head).read_bytes()


def test_bad_input_is_one_line(tiny_rlhf, tmp_path, capsys):
    policy, rm, prompts = tiny_rlhf
    long = tmp_path / "long.jsonl"
    long.write_text("".join(json.dumps({"prompt": "1+1=" * (10 if i == 3 else 1)}) + "\n" for i in range(10)))
    args = ["ppo", "--policy", str(policy), "--reward", str(rm), "--out", str(tmp_path / "x"),
            "--set", "ppo.max_new_tokens=6"]  # fmt: skip
    assert main([*args, "--prompts", str(long)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "context" in err and "long.jsonl" in err and "prompt 3" in err
    assert main([*args, "--prompts", str(prompts), "--reward", str(policy)]) == 2
    assert "not a reward model" in capsys.readouterr().err
    body, tokenizer, _ = load_model(policy / "final")  # the same weights, saved with another vocabulary
    other = train_char(["0123456789+-= xyz"], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS))
    assert other.vocab_size <= body.config.vocab_size and other.fingerprint() != tokenizer.fingerprint()
    save_reward_model(tmp_path / "other-rm", RewardModel(body), other)
    assert main([*args, "--prompts", str(prompts), "--reward", str(tmp_path / "other-rm")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokenizer differs from the policy's" in err
    assert not (tmp_path / "x" / "checkpoints").exists()
