"""GRPO and RLOO: the vectorised advantages and losses against plain loops, no gradient (and no NaN) from
a group without spread, a two-armed bandit learnt with the loss functions, an exact resume through the
Trainer on a tiny model, and bad input through the command line (one line, exit 2)."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import pytest
import torch

from scratchlm.align import grpo as G
from scratchlm.align.grpo_config import load_grpo_config
from scratchlm.align.grpo_objective import grpo
from scratchlm.cli import main
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import save_model
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_char
from scratchlm.train import checkpoint as ckpt
from scratchlm.train.run_dir import RunDir

# ---- twins: the vectorised functions against loops over answers and tokens ---------------------------


def loop_advantages(rewards: list[float], group: int, algorithm: str, scale: str) -> list[float]:
    everyone = statistics.stdev(rewards)
    out = []
    for start in range(0, len(rewards), group):
        r = rewards[start : start + group]
        for i, x in enumerate(r):
            if max(r) == min(r):
                out.append(0.0)
                continue
            if algorithm == "grpo":
                a = x - sum(r) / group
            else:
                a = x - sum(r[j] for j in range(group) if j != i) / (group - 1)
            std = {"group": statistics.stdev(r), "batch": everyone, "none": None}[scale]
            out.append(a if std is None else a / (std + 1e-4))
    return out


def loop_loss(logp, old, ref, mask, rewards, group, algorithm, scale, loss_type, beta, eps, eps_high, L):
    """The whole step's loss, one token at a time (TRL 1.16's definitions, read off its grpo_trainer)."""
    n = len(rewards)
    lengths = [sum(mask[i]) for i in range(n)]
    if algorithm == "rloo":  # the k1 KL of each answer comes off its reward before the baseline
        rewards = [
            rewards[i] - beta * sum(old[i][t] - ref[i][t] for t in range(lengths[i])) for i in range(n)
        ]
    advantages = loop_advantages(rewards, group, algorithm, scale)
    per_answer = []
    for i in range(n):
        losses = []
        for t in range(lengths[i]):
            ratio = math.exp(logp[i][t] - old[i][t])
            clipped = min(max(ratio, 1 - eps), 1 + eps_high)
            loss = -min(ratio * advantages[i], clipped * advantages[i])
            if algorithm == "grpo":
                d = ref[i][t] - logp[i][t]
                loss += beta * (math.exp(d) - d - 1)
            losses.append(loss)
        per_answer.append(losses)
    if loss_type == "dapo":
        return sum(map(sum, per_answer)) / sum(lengths)
    if loss_type == "grpo":
        return sum(sum(ls) / len(ls) for ls in per_answer) / n
    return sum(map(sum, per_answer)) / (n * L)


def vectorised_loss(logp, old, ref, mask, rewards, group, algorithm, scale, loss_type, beta, eps, eps_high, L,
                    parts=1):  # fmt: skip
    """The objective's pipeline, with the rows cut into `parts` micro-batches as the trainer sums them."""
    if algorithm == "rloo":
        advantages = G.leave_one_out_advantages(rewards - beta * G.kl_k1(old, ref, mask), group, scale)
    else:
        advantages = G.group_advantages(rewards, group, scale)
    total, count = 0.0, 0
    b = len(rewards) // parts
    for s in [slice(i, i + b) for i in range(0, len(rewards), b)]:
        per_token, _ = G.clipped_surrogate(logp[s], old[s], advantages[s], eps, eps_high)
        if algorithm == "grpo":
            per_token = per_token + beta * G.kl_k3(logp[s], ref[s])
        loss_sum, n = G.aggregate(per_token, mask[s], loss_type, L)
        assert n == G.count(mask[s], loss_type, L)
        total, count = total + loss_sum, count + n
    return total / count


def _random_step(seed: int, prompts: int = 3, group: int = 4, R: int = 5):
    gen = torch.Generator().manual_seed(seed)
    N = prompts * group
    old = -torch.rand(N, R, generator=gen) * 2
    logp = old + 0.4 * torch.randn(N, R, generator=gen)  # some ratios outside 1 +- 0.2: the clip bites
    ref = old + 0.3 * torch.randn(N, R, generator=gen)
    lengths = torch.randint(1, R + 1, (N,), generator=gen)
    mask = torch.arange(R)[None, :] < lengths[:, None]
    rewards = torch.randint(0, 3, (N,), generator=gen).float() / 2
    rewards[:group] = 0.5  # one group without spread
    return logp * mask, old * mask, ref * mask, mask, rewards


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_equal_a_loop(algorithm, scale):
    rewards = torch.tensor([0, 1, 1, 0, 2, 2, 2, 2, 0.5, 0, 0, 3.0])
    fn = G.group_advantages if algorithm == "grpo" else G.leave_one_out_advantages
    got = fn(rewards, 4, scale).tolist()
    assert got == pytest.approx(loop_advantages(rewards.tolist(), 4, algorithm, scale), rel=1e-5, abs=1e-6)
    assert got[4:8] == [0.0] * 4


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_the_loss_equals_a_loop_whole_or_in_micro_batches(algorithm, loss_type):
    for seed in range(3):
        logp, old, ref, mask, rewards = _random_step(seed)
        args = (
            rewards,
            4,
            algorithm,
            "none" if algorithm == "rloo" else "group",
            loss_type,
            0.05,
            0.2,
            0.28,
            5,
        )
        expected = loop_loss(logp.tolist(), old.tolist(), ref.tolist(), mask.tolist(), rewards.tolist(),
                             *args[1:])  # fmt: skip
        whole = vectorised_loss(logp, old, ref, mask, *args)
        split = vectorised_loss(logp, old, ref, mask, *args, parts=3)  # one group per micro-batch
        assert float(whole) == pytest.approx(expected, rel=1e-5)
        assert float(split) == pytest.approx(expected, rel=1e-5)


def test_the_clip_counts_only_the_tokens_it_holds():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    old = torch.zeros(1, 3)
    _, up = G.clipped_surrogate(logp, old, torch.tensor([1.0]), 0.2, 0.28)
    _, down = G.clipped_surrogate(logp, old, torch.tensor([-1.0]), 0.2, 0.28)
    assert up.tolist() == [[True, False, False]] and down.tolist() == [[False, True, False]]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_a_group_of_equal_rewards_gives_zero_gradient_not_nan(algorithm, loss_type):
    fn = G.group_advantages if algorithm == "grpo" else G.leave_one_out_advantages
    for rewards in (torch.full((8,), 0.3), torch.ones(8), torch.zeros(8)):
        logp = torch.randn(8, 4, requires_grad=True)
        advantages = fn(rewards, 8, "group")
        per_token, _ = G.clipped_surrogate(logp, logp.detach() + 0.1, advantages)
        loss_sum, n = G.aggregate(per_token, torch.ones(8, 4, dtype=torch.bool), loss_type, 4)
        (loss_sum / n).backward()
        assert torch.equal(advantages, torch.zeros(8)) and torch.equal(logp.grad, torch.zeros(8, 4))


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_a_two_armed_bandit_learns_the_paying_arm(algorithm):
    """A policy of two logits, trained by the loss functions alone: arm 1 pays 1, arm 0 pays 0."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([logits], lr=0.5)
    advantage = G.group_advantages if algorithm == "grpo" else G.leave_one_out_advantages
    for _ in range(60):
        arms = torch.multinomial(torch.softmax(logits.detach(), -1), 4 * 8, replacement=True, generator=gen)
        logp = torch.log_softmax(logits, -1)[arms][:, None]  # (32, 1): one-token answers
        advantages = advantage((arms == 1).float(), 8, "group" if algorithm == "grpo" else "none")
        per_token, _ = G.clipped_surrogate(logp, logp.detach(), advantages)
        loss_sum, n = G.aggregate(per_token, torch.ones_like(logp, dtype=torch.bool))
        optimizer.zero_grad()
        (loss_sum / n).backward()
        optimizer.step()
    assert torch.softmax(logits, -1)[1] > 0.95


# ---- through the Trainer, on a tiny model -------------------------------------------------------------


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny, untrained chat model: its answers are noise, which a dense reward can still rank."""
    torch.manual_seed(0)
    tokenizer = train_char(["0123456789+-="], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS))
    shape = {"context_length": 32, "n_layers": 1, "d_model": 16, "n_heads": 2}
    folder = tmp_path_factory.mktemp("policy") / "model"
    save_model(folder, Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **shape)), tokenizer)
    return folder


@pytest.fixture(scope="module")
def rewards(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "rewards.py"
    path.write_text(
        "def digits(prompt, completion):\n    return sum(c.isdigit() for c in completion) / 4\n"
        "def boom(prompt, completion):\n    raise ValueError('no judge today')\n"
        "def nan(prompt, completion):\n    return float('nan')\n"
    )
    return path


def _settings(policy, steps: int, **extra) -> dict:
    return {
        "policy": str(policy), "tasks": "['arithmetic:digits=1,op=+']", "rollout.prompts": 2,
        "rollout.group": 4, "rollout.max_new_tokens": 4, "rollout.pool": 16, "budget.max_time": "",
        "budget.max_steps": steps, "eval.every": 0, "eval.max_examples": 8, "eval.max_new_tokens": 4,
        "logging.every": 1, "logging.progress": "false", "logging.tensorboard": "false",
        "checkpoint.every": 3, "optim.lr": 0.01, "schedule.kind": "constant", **extra,
    }  # fmt: skip


def _config(policy, steps: int, **extra):
    return load_grpo_config(None, [f"{k}={v}" for k, v in _settings(policy, steps, **extra).items()])


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_a_tiny_run_trains_evaluates_and_resumes_exactly(policy, rewards, tmp_path, algorithm):
    # Two optimizer steps per rollout and a checkpoint at step 3: resume starts inside a rollout's steps.
    extra = {"reward": f"{rewards}:digits", "algorithm": algorithm, "loss.num_iterations": 2,
             "loss.beta": 0.1, "loss.epsilon": 0.05, "rollout.grad_accum": 2}  # fmt: skip
    quiet = {"say": lambda *_: None}
    whole = grpo(_config(policy, 6, **extra), tmp_path / "whole", **quiet)
    assert {"val_loss", "reward", "exact:arithmetic:digits=1,op=+"} <= set(whole.evaluation)
    assert whole.val_loss == -whole.evaluation["reward"]
    grpo(_config(policy, 3, **extra), tmp_path / "broken", **quiet)
    grpo(_config(policy, 6, **extra), tmp_path / "broken", resume=True, **quiet)
    records = {name: RunDir(tmp_path / name).read_metrics("train") for name in ("whole", "broken")}
    assert len(records["whole"]) == 6
    for key in ("loss", "reward", "clip_fraction", "kl", "ratio_drift"):
        assert [r[key] for r in records["broken"]] == [r[key] for r in records["whole"]], key
    first = records["whole"]
    assert first[0]["ratio_drift"] < 1e-4 and first[1]["ratio_drift"] > 1e-3  # a rollout's 2nd step moved
    assert {"reward_std", "flat_groups", "response_length", "finished", "tokens_per_s"} <= set(first[0])


def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom scratchlm.cli import main\ntry:\n    main(['grpo', '--help'])\nexcept SystemExit:\n"
    )
    code += "    pass\nassert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "--task" in done.stdout, done.stderr


def _cli(policy, out, steps, *more, **extra) -> list[str]:
    pairs = [a for k, v in _settings(policy, steps, **extra).items() for a in ("--set", f"{k}={v}")]
    return ["grpo", "--out", str(out), *pairs, *more]


@pytest.mark.parametrize(
    "more, message",
    [
        (["--task", "algebra"], "unknown task 'algebra'; known tasks: arithmetic"),
        (["--set", "rollout.group=1"], "rollout.group 1 has no baseline"),
        (["--task", "dialogue"], "task dialogue has no exact-answer checker"),
        (["--reward", "nowhere.py:f"], "no such file nowhere.py"),
    ],
)
def test_bad_settings_are_one_line_exit_2(policy, tmp_path, capsys, more, message):
    assert main(_cli(policy, tmp_path / "run", 2, *more)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_failing_reward_names_the_sample_and_keeps_the_last_checkpoint(policy, rewards, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cli(policy, out, 3)) == 0  # the task's own checker; a checkpoint at step 3
    capsys.readouterr()
    for name, message in (("boom", "raised ValueError: no judge today on sample 0 (prompt '"),
                          ("nan", "returned nan for sample 0 (prompt '")):  # fmt: skip
        assert main(_cli(policy, out, 6, "--resume", "--reward", f"{rewards}:{name}")) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and "completion '" in err, err
        assert [step for step, _ in RunDir(out).checkpoints()] == [3]
        assert ckpt.is_complete(RunDir(out).checkpoint_path(3))[0]
    assert main(_cli(policy, out, 6, "--resume", "--reward", f"{rewards}:digits")) == 0
