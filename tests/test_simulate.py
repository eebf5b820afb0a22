"""Simulated labelling: K answers per prompt ranked by a noisy gold judge, with the noise ceiling asked for.

The gold judge here counts vowels (the babbler's random characters would all score 0 with VADER), so
the answers' gold scores differ and the Bradley-Terry noise has something to blur.
"""

from __future__ import annotations

import json

import pytest
from test_label import K, babbler, chat_tokenizer

from scratchlm.align.annotators import agreement_ceiling
from scratchlm.align.preferences import read_preferences
from scratchlm.align.simulate import (
    gold_agreement,
    gold_differences,
    rank_answers,
    sample_answers,
    simulate_preferences,
)
from scratchlm.cli import main
from scratchlm.errors import ScratchError
from scratchlm.generate.config import SamplingConfig
from scratchlm.model.folder import save_model

PROMPTS = [[{"role": "user", "content": f"say {'abcdefgh'[i % 8] * (1 + i % 3)}"}] for i in range(24)]
SAMPLING = SamplingConfig(max_new_tokens=10)


class Vowels:
    name = "vowels"

    def score(self, prompt, answer: str) -> float:
        return sum(c in "aeiou" for c in answer) / max(len(answer), 1)


class Constant:
    name = "constant"

    def score(self, prompt, answer: str) -> float:
        return 1.0


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return babbler(tokenizer)


@pytest.fixture(scope="module")
def simulated(model, tokenizer):
    return simulate_preferences(model, tokenizer, PROMPTS, K, Vowels(), SAMPLING, ceiling=0.8, seed=3)


def test_records_rank_k_answers_and_carry_their_gold(simulated):
    records, stats = simulated
    assert len(records) == len(PROMPTS) == stats.prompts
    for prompt, record in zip(PROMPTS, records):
        assert record["prompt"] == prompt and len(record["responses"]) == K
        assert record["gold"] == [Vowels().score(prompt, r) for r in record["responses"]]  # aligned
        assert record["tau"] == stats.tau and record["annotator"] == "simulated:vowels"
    assert stats.pairs + stats.identical == len(PROMPTS) * K * (K - 1) // 2
    all_gold = [g for r in records for g in r["gold"]]
    assert stats.mean_gold == pytest.approx(sum(all_gold) / len(all_gold))
    assert stats.agreement == gold_agreement(records)
    assert stats.summary().startswith(f"{len(PROMPTS)} prompts, {stats.pairs} pairs")


def test_the_noise_ceiling_on_the_generated_pairs_is_the_one_asked(simulated):
    records, stats = simulated
    answers = [r["responses"] for r in records]
    differences = gold_differences(answers, [r["gold"] for r in records])
    assert len(differences) == stats.pairs > 0
    assert agreement_ceiling(differences, stats.tau) == pytest.approx(0.8, abs=1e-6)
    assert stats.ceiling == pytest.approx(0.8, abs=1e-6)


def test_labels_agree_with_gold_at_the_ceiling_rate_over_many_draws(simulated):
    """Each pair of a Gumbel-sorted ranking has the Bradley-Terry probability, so over many draws the
    labels agree with gold at E[max(p, 1 - p)] = the ceiling (std over 300 draws of ~70 pairs: ~0.003)."""
    records, stats = simulated
    prompts, answers = [r["prompt"] for r in records], [r["responses"] for r in records]
    rates = [gold_agreement(rank_answers(prompts, answers, Vowels(), stats.tau, seed=s)) for s in range(300)]
    assert sum(rates) / len(rates) == pytest.approx(0.8, abs=0.012)
    assert 0.5 < min(rates) < max(rates) < 1  # each draw is noisy


def test_a_seed_gives_the_same_file_and_another_seed_another(model, tokenizer, simulated):
    again, _ = simulate_preferences(model, tokenizer, PROMPTS, K, Vowels(), SAMPLING, ceiling=0.8, seed=3)
    other, _ = simulate_preferences(model, tokenizer, PROMPTS, K, Vowels(), SAMPLING, ceiling=0.8, seed=4)
    assert again == simulated[0]
    assert other != simulated[0]


def test_a_slice_of_whole_chunks_samples_what_the_whole_source_does(model, tokenizer):
    sampling = SamplingConfig(max_new_tokens=6, seed=7)
    whole = sample_answers(model, tokenizer, PROMPTS[:12], K, sampling, batch_size=4)
    assert sample_answers(model, tokenizer, PROMPTS[4:12], K, sampling, batch_size=4, start=4) == whole[4:]
    one = [sample_answers(model, tokenizer, [p], K, sampling, batch_size=1, start=i)[0] for i, p in
           enumerate(PROMPTS[:3])]  # fmt: skip
    assert one == sample_answers(model, tokenizer, PROMPTS[:3], K, sampling, batch_size=1)
    assert len({a for answers in whole for a in answers}) == 12 * K  # all different draws


def test_a_given_tau_is_kept_and_its_ceiling_reported(model, tokenizer):
    records, stats = simulate_preferences(model, tokenizer, PROMPTS[:6], K, Vowels(), SAMPLING, tau=0.05)
    assert stats.tau == 0.05 and all(r["tau"] == 0.05 for r in records)
    differences = gold_differences([r["responses"] for r in records], [r["gold"] for r in records])
    assert stats.ceiling == agreement_ceiling(differences, 0.05)


def test_what_cannot_be_simulated_is_one_line(model, tokenizer):
    with pytest.raises(ScratchError, match=r"^judge constant on 18 generated pairs: a noise ceiling of 0.8"):
        simulate_preferences(model, tokenizer, PROMPTS[:6], K, Constant(), SAMPLING)
    with pytest.raises(ScratchError, match=r"^the tokenizer has no <\|system\|> token, which chat needs"):
        plain = chat_tokenizer(chat_tokens=False)
        simulate_preferences(babbler(plain), plain, PROMPTS[:2], K, Vowels(), SAMPLING)
    with pytest.raises(ScratchError, match=r"^k = 1: a ranking needs at least two answers per prompt"):
        simulate_preferences(model, tokenizer, PROMPTS[:2], 1, Vowels(), SAMPLING)
    with pytest.raises(
        ScratchError, match=r"^judge vowels on 6 generated pairs: a noise ceiling of 0.99 is out of reach"
    ):
        simulate_preferences(model, tokenizer, PROMPTS[:2], K, Vowels(), SAMPLING, ceiling=0.99)


def test_the_command_writes_the_file_and_one_summary_line(model, tokenizer, tmp_path, capsys):
    model_dir = save_model(tmp_path / "model", model, tokenizer)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:5]))
    out = tmp_path / "prefs.jsonl"
    argv = ["label", "--ckpt", str(model_dir), "--prompts", str(prompts), "--out", str(out), "--k", "3"]
    assert main([*argv, "--judge", "sentiment", "--tau", "0.5", "--max-new-tokens", "8"]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"{out}: 5 prompts, 15 pairs, tau 0.5, noise ceiling ") and line.count("\n") == 1
    assert read_preferences(out).rankings == 5
    records = [json.loads(r) for r in out.read_text().splitlines()]
    assert all(r["annotator"] == "simulated:sentiment" and len(r["gold"]) == 3 for r in records)
    assert main([*argv, "--judge", "sentiment"]) == 2  # no overwrite without --force
    assert capsys.readouterr().err.startswith(f"scratchlm: error: {out} exists, and simulated labelling")
    task = ["--prompts", "task:arithmetic:digits=1,op=+", "--n", "4", "--force", "--max-new-tokens", "4"]
    assert main([*argv[:3], *task, "--out", str(out), "--judge", "exact:arithmetic:digits=1,op=+"]) == 2
    assert "a noise ceiling of 0.8 is out of reach" in capsys.readouterr().err  # a babbler is never right
