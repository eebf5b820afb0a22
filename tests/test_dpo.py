"""DPO: the losses against a plain Python loop, the batched loss and gradient against one pair at a time,
ln 2 when the policy is the reference, a reference computed once and never on resume, exact resume, bad
input as one line through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scratchlm.align import dpo_objective
from scratchlm.align.dpo import encode_pairs, preference_losses, sequence_logprobs
from scratchlm.align.dpo_config import load_dpo_config
from scratchlm.align.dpo_objective import DPO, REFERENCE_CACHE, dpo
from scratchlm.align.preferences import read_preferences
from scratchlm.cli import main
from scratchlm.model import ModelConfig, Transformer
from scratchlm.model.folder import save_model
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_char
from scratchlm.train import distributed
from scratchlm.train.run_dir import RunDir

QUIET = lambda *_: None  # noqa: E731


def _python_loss(kind, pc, pr, rc, rr, lc, lr, beta, eps):
    """One pair's loss, written from the papers' formulas with math only."""
    log_sigmoid = lambda x: -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))  # noqa: E731
    delta = (pc - rc) - (pr - rr)
    if kind == "sigmoid":
        return -(1 - eps) * log_sigmoid(beta * delta) - eps * log_sigmoid(-beta * delta)
    if kind == "ipo":
        return ((pc - rc) / lc - (pr - rr) / lr - 1 / (2 * beta)) ** 2
    return max(0.0, 1 - beta * delta)


@pytest.mark.parametrize("kind, eps", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0)])
def test_each_loss_is_its_formula_pair_by_pair(kind, eps):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-30 * torch.rand(16, generator=g, dtype=torch.float64) for _ in range(4))
    lc, lr = (torch.randint(1, 20, (16,), generator=g).double() for _ in range(2))
    beta = 0.3
    ours = preference_losses(pc, pr, rc, rr, (lc, lr), loss=kind, beta=beta, label_smoothing=eps)
    loop = [
        _python_loss(kind, *(float(t[i]) for t in (pc, pr, rc, rr, lc, lr)), beta, eps) for i in range(16)
    ]
    assert ours.tolist() == pytest.approx(loop, rel=1e-12, abs=1e-12)
    same = preference_losses(pc, pr, pc, pr, (lc, lr), loss=kind, beta=beta, label_smoothing=eps)
    at_reference = {"sigmoid": math.log(2), "ipo": 1 / (4 * beta**2), "hinge": 1.0}[kind]
    assert same.tolist() == pytest.approx([at_reference] * 16, rel=1e-12)


# ---- a tiny SFT model and preference file ---------------------------------------------------------


def _tokenizer():
    return train_char(
        ["abcdefghijklmnopqrstuvwxyz !?.,0123456789"], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS)
    )


def _records():
    words = ["good", "fine", "bad", "sad", "nice", "awful"]
    records = [
        {"prompt": f"tell me {i}", "chosen": " ".join(words[(i + k) % 2] for k in range(1 + i % 4)),
         "rejected": " ".join(words[2 + (i + k) % 2] for k in range(1 + i % 3))}
        for i in range(40)
    ]  # fmt: skip
    records.append({"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "rank"}],
                    "responses": ["nice one", "fine", "awful"]})  # fmt: skip
    records.append({"prompt": "same", "chosen": "ok", "rejected": "ok"})  # skipped, counted
    return records


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo")
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    shape = {"context_length": 48, "n_layers": 2, "d_model": 32, "n_heads": 2, "ngram_orders": [2]}
    save_model(root / "sft", Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, **shape)), tokenizer)
    prefs = root / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    return root / "sft", prefs


def _settings(policy, prefs, steps: int, **extra) -> list[str]:
    settings = {
        "policy": str(policy), "prefs": str(prefs), "data.batch_size": 6, "data.heldout": 5,
        "budget.max_time": "", "budget.max_steps": steps, "optim.name": "adamw", "optim.lr": 0.003,
        "schedule.kind": "constant", "precision": "fp32", "logging.every": 1, "logging.progress": "false",
        "logging.tensorboard": "false", "checkpoint.every": 3, **extra,
    }  # fmt: skip
    return [f"{k}={v}" for k, v in settings.items()]


def test_answers_count_their_content_and_end_only_and_a_ranking_shares_its_answers(setup):
    _, prefs_path = setup
    prefs = read_preferences(prefs_path)
    assert prefs.identical == 1 and len(prefs.pairs) == 40 + 3
    tokenizer = _tokenizer()
    data = encode_pairs(prefs.pairs, tokenizer, 48)
    assert len(data.sequences) == 2 * 40 + 3  # the ranking's 3 pairs hold 3 answers, not 6
    inputs, targets = data.batch(data.chosen[[40, 0]], "cpu")
    counted = [tokenizer.decode(t[t >= 0].tolist()) for t in targets]
    assert counted == ["nice one<|end|>", prefs.pairs[0].chosen + "<|end|>"]
    assert (inputs[1, len(data.sequences[data.chosen[0]]) - 1 :] == 0).all()  # right padding


def test_the_batched_loss_is_the_loss_of_one_pair_at_a_time(setup, tmp_path):
    policy, prefs = setup
    cfg = load_dpo_config(None, _settings(policy, prefs, 1, **{"data.heldout": 0, "loss": "ipo"}))
    objective = DPO(cfg, RunDir(tmp_path / "run"), distributed.World(), resume=False, say=QUIET)
    with torch.no_grad():  # a perturbed policy: at policy == reference every pair would give the same loss
        for p in objective.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pairs = torch.arange(len(objective.train)).numpy()
    batch = objective._micro_batch(objective.train, objective.reference["train"], pairs)
    loss_sum, n = objective.loss(objective.models, batch)
    data, ref = objective.train, objective.reference["train"]
    alone = []
    for i in pairs:
        c, r = (data.batch([s], "cpu") for s in (data.chosen[i], data.rejected[i]))
        logp = [sequence_logprobs(objective.policy, *seq) for seq in (c, r)]
        lengths = [torch.tensor([float(data.lengths[s])]) for s in (data.chosen[i], data.rejected[i])]
        alone.append(preference_losses(*logp, ref[[data.chosen[i]]], ref[[data.rejected[i]]], tuple(lengths),
                                       loss="ipo", beta=cfg.beta))  # fmt: skip
    alone = torch.cat(alone).sum()
    assert n == len(pairs)
    assert loss_sum.item() == pytest.approx(alone.item(), rel=1e-5)
    params = list(objective.policy.parameters())
    batched_grads = torch.autograd.grad(loss_sum, params)
    for batched, one_by_one in zip(batched_grads, torch.autograd.grad(alone, params), strict=True):
        torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-5)


def test_policy_equal_to_reference_gives_ln2_and_figures_of_zero(setup, tmp_path):
    policy, prefs = setup
    dpo(load_dpo_config(None, _settings(policy, prefs, 1)), tmp_path / "run", say=QUIET)
    (record,) = RunDir(tmp_path / "run").read_metrics("train")
    assert record["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(record["rewards/margins"]) < 1e-5 and record["logps/chosen"] < 0


def test_the_reference_is_computed_once_and_resume_is_exact(setup, tmp_path, monkeypatch):
    policy, prefs = setup
    calls = []
    compute = dpo_objective.compute_reference_logps
    monkeypatch.setattr(dpo_objective, "compute_reference_logps", lambda *a: calls.append(1) or compute(*a))
    whole = dpo(load_dpo_config(None, _settings(policy, prefs, 6)), tmp_path / "whole", say=QUIET)
    assert calls == [1] and {"val_loss", "val_accuracy", "rewards/margins"} <= set(whole.evaluation)
    dpo(load_dpo_config(None, _settings(policy, prefs, 3)), tmp_path / "broken", say=QUIET)
    cache = tmp_path / "broken" / REFERENCE_CACHE
    before = cache.read_bytes()
    calls.clear()
    dpo(load_dpo_config(None, _settings(policy, prefs, 6)), tmp_path / "broken", resume=True, say=QUIET)
    assert calls == [] and cache.read_bytes() == before  # read back, never recomputed
    losses = {name: [r["loss"] for r in RunDir(tmp_path / name).read_metrics("train")]
              for name in ("whole", "broken")}  # fmt: skip
    assert len(losses["whole"]) == 6 and losses["broken"] == losses["whole"]
    assert losses["whole"][-1] < losses["whole"][0]


def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys):
    policy, prefs = setup
    long_prompt = tmp_path / "long.jsonl"
    long_prompt.write_text(
        prefs.read_text() + json.dumps({"prompt": "a" * 60, "chosen": "b", "rejected": "c"}) + "\n"
    )
    cases = {
        "no such preference file": ["--prefs", str(tmp_path / "missing.jsonl")],
        "loss 'dpo' is unknown": ["--set", "loss=dpo"],
        "beta must be > 0": ["--set", "beta=0"],
        "long.jsonl:43: the prompt is 63 tokens, longer than the model's context of 48": [
            "--prefs",
            str(long_prompt),
        ],
    }
    for i, (message, extra) in enumerate(cases.items()):
        args = ["dpo", "--out", str(tmp_path / f"run{i}"), "--policy", str(policy), "--prefs", str(prefs),
                *[a for o in _settings(policy, prefs, 1)[2:] for a in ("--set", o)], *extra]  # fmt: skip
        assert main(args) == 2, message
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
