"""Alignment data: preference files (pairs, rankings, TRL's shapes, torn lines, undo), simulated annotators
(their label noise is the Bradley-Terry rate they promise), and rollouts (their log-probabilities are the
sampler's, and a fresh forward pass gives them back)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from scratchlm.align.annotators import Annotator, agreement_ceiling, get_judge, sigmoid, tau_for_ceiling
from scratchlm.align.preferences import (
    append_record,
    read_preferences,
    read_records,
    remove_last_record,
    repair_tail,
)
from scratchlm.align.prompts import read_prompts
from scratchlm.align.rollout import rollout, token_logprobs
from scratchlm.errors import ScratchError
from scratchlm.generate.config import SamplingConfig
from scratchlm.model import ModelConfig, Transformer
from scratchlm.tokenizer import CHAT_SPECIAL_TOKENS, ENDOFTEXT, train_char


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_pairs_and_rankings_in_every_accepted_shape(tmp_path):
    user = [{"role": "user", "content": "hi"}]
    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    path = _write(tmp_path / "p.jsonl", [
        {"prompt": "hi", "chosen": "a", "rejected": "b", "margin": 0.5},
        {"prompt": user, "chosen": answer("c"), "rejected": answer("d")},  # TRL conversational
        {"chosen": user + answer("e"), "rejected": user + answer("f")},  # TRL implicit prompt
        {"prompt": "q", "responses": ["1", "2", "3", "4"]},  # a ranking, best first
    ])  # fmt: skip
    prefs = read_preferences(path)
    assert prefs.records == 4 and prefs.rankings == 1 and len(prefs.pairs) == 3 + 6
    assert [(p.chosen, p.rejected) for p in prefs.pairs[:3]] == [("a", "b"), ("c", "d"), ("e", "f")]
    assert prefs.pairs[0].margin == 0.5 and prefs.pairs[1].messages == user
    ranking = [(p.chosen, p.rejected) for p in prefs.pairs[3:]]
    assert ranking == [("1", "2"), ("1", "3"), ("1", "4"), ("2", "3"), ("2", "4"), ("3", "4")]
    assert {p.group for p in prefs.pairs[3:]} == {3} and prefs.groups[-1] == list(range(3, 9))


def test_identical_answers_are_skipped_and_counted_and_bad_records_name_their_line(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "a"},
                                         {"prompt": "x", "responses": ["a", "b", "a"]}])  # fmt: skip
    prefs = read_preferences(path)
    assert prefs.identical == 2 and len(prefs.pairs) == 2 and "2 identical pairs skipped" in prefs.summary()
    with pytest.raises(ScratchError, match="no usable pair"):
        read_preferences(_write(tmp_path / "same.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "a"}]))
    with pytest.raises(ScratchError, match=r"one.jsonl:2: a ranking needs at least two responses"):
        read_preferences(_write(tmp_path / "one.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "b"},
                                                         {"prompt": "x", "responses": ["a"]}]))  # fmt: skip
    with pytest.raises(ScratchError, match=r"role.jsonl:1: prompt: .*'user'"):
        read_preferences(_write(tmp_path / "role.jsonl", [{"prompt": [{"role": "assistant", "content": "x"}],
                                                           "chosen": "a", "rejected": "b"}]))  # fmt: skip
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "chosen": "a", "rejected": "b"}\n{oops\n')
    with pytest.raises(ScratchError, match=r"bad.jsonl:2: not valid JSON"):
        read_preferences(bad)


def test_a_torn_last_line_never_passes_as_whole_and_undo_rewrites_atomically(tmp_path):
    path = tmp_path / "prefs.jsonl"
    for i in range(3):
        append_record(path, {"prompt": f"q{i}", "responses": ["a", "b"]})
    with path.open("ab") as f:
        f.write(b'{"prompt": "q3", "respon')  # a crash mid-append
    with pytest.raises(ScratchError, match=r"prefs.jsonl:4: the last record has no end of line"):
        read_preferences(path)
    assert repair_tail(path) and not repair_tail(path)
    assert [r["prompt"] for _, r in read_records(path)] == ["q0", "q1", "q2"]
    assert remove_last_record(path)["prompt"] == "q2"
    assert [r["prompt"] for _, r in read_records(path)] == ["q0", "q1"]
    assert path.read_text().endswith("\n") and not list(tmp_path.glob("*.tmp*"))


def test_tau_gives_the_asked_noise_ceiling():
    rng = random.Random(0)
    differences = [rng.uniform(-1, 1) for _ in range(500)]
    tau = tau_for_ceiling(differences, 0.8)
    assert agreement_ceiling(differences, tau) == pytest.approx(0.8, abs=1e-9)
    assert agreement_ceiling(differences, tau / 2) > 0.8 > agreement_ceiling(differences, tau * 2)
    with pytest.raises(ScratchError, match="out of reach"):
        tau_for_ceiling([0.0, 0.0], 0.8)


class _Length:
    name = "length"

    def score(self, prompt, answer):
        return float(len(answer))


def test_the_annotator_prefers_by_the_bradley_terry_rate():
    """Over many rankings of 3 answers, each pair is ordered by gold at sigmoid(|dg| / tau): the promise
    that makes the noise ceiling known."""
    annotator = Annotator(_Length(), tau=2.0, seed=0)
    answers = ["a", "abc", "abcdef"]  # gold 1, 3, 6
    wins = {(1, 0): 0, (2, 0): 0, (2, 1): 0}
    n = 6000
    for _ in range(n):
        order, gold = annotator.rank([], answers)
        place = {i: k for k, i in enumerate(order)}
        for better, worse in wins:
            wins[(better, worse)] += place[better] < place[worse]
    assert gold == [1.0, 3.0, 6.0]
    for (better, worse), count in wins.items():
        want = sigmoid((len(answers[better]) - len(answers[worse])) / 2.0)
        assert abs(count / n - want) < 4 * math.sqrt(want * (1 - want) / n), (better, worse)


def test_gold_judges():
    sentiment = get_judge("sentiment")
    assert (
        sentiment.score([], "What a lovely, happy day<|end|>")
        > 0.5
        > sentiment.score([], "I hate thee, villain")
    )
    exact = get_judge("exact:arithmetic:digits=1,op=+")
    prompt = [{"role": "user", "content": "3+4="}]
    assert exact.score(prompt, "7<|end|>") == 1.0 and exact.score(prompt, "8") == 0.0
    with pytest.raises(ScratchError, match="unknown judge"):
        get_judge("vibes")


def test_prompt_sources(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "a"}, {"messages": [{"role": "user", "content": "b"}]}])
    assert read_prompts(path) == [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    task = read_prompts("task:arithmetic:digits=1,op=+", n=5, split="heldout")
    assert len(task) == 5 and all(p[-1]["role"] == "user" and p[-1]["content"].endswith("=") for p in task)
    _write(tmp_path / "bad.jsonl", [{"prompt": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(ScratchError, match=r"bad.jsonl:1: "):
        read_prompts(tmp_path / "bad.jsonl")


# ---- rollouts -----------------------------------------------------------------------------------------


def _tiny():
    tokenizer = train_char(["0123456789+-= abc"], special_tokens=(ENDOFTEXT, *CHAT_SPECIAL_TOKENS))
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size + 3, context_length=48, n_layers=2, d_model=32, n_heads=2
    )  # fmt: skip  (3 ids past the tokenizer: the sampler must never pick them)
    return Transformer(config), tokenizer  # seed 0 and seed 3 below: some rows finish, some do not


def test_rollout_log_probs_are_the_samplers_and_a_fresh_forward_pass_matches():
    model, tokenizer = _tiny()
    prompts = [[{"role": "user", "content": "1+2="}], [{"role": "user", "content": "abc abc 12"}]]
    batch = rollout(
        model, tokenizer, prompts, SamplingConfig(max_new_tokens=12, temperature=0.7, seed=3), group=3
    )
    assert (
        len(batch) == 6
        and batch.prompts[0] == batch.prompts[2] == prompts[0]
        and batch.prompts[3] == prompts[1]
    )
    end = tokenizer.special_tokens["<|end|>"]
    specials = set(tokenizer.special_tokens.values())
    assert 0 < int(batch.finished.sum()) < 6  # both kinds of row are covered
    for row in range(6):
        real = batch.response_ids[row][batch.response_mask[row]].tolist()
        ended = real[-1] in specials  # an answer ends at its first special token, <|end|> or another
        assert (real[-1] == end) == bool(batch.finished[row]) and not specials & set(real[:-1])
        assert ended or len(real) == batch.response_ids.shape[1]
        assert max(real) < tokenizer.vocab_size
        assert batch.texts[row] == tokenizer.decode(real[:-1] if ended else real)
    fresh = token_logprobs(model, batch, temperature=0.7, vocab_limit=tokenizer.vocab_size)
    torch.testing.assert_close(fresh, batch.logprobs, rtol=0, atol=1e-5)
    assert (batch.logprobs[~batch.response_mask] == 0).all() and (
        batch.logprobs[batch.response_mask] < 0
    ).all()
    again = rollout(
        model, tokenizer, prompts, SamplingConfig(max_new_tokens=12, temperature=0.7, seed=3), group=3
    )
    assert torch.equal(again.sequences, batch.sequences)  # seeded


def test_a_prompt_that_leaves_no_room_to_answer_is_refused():
    model, tokenizer = _tiny()
    with pytest.raises(ScratchError, match="prompt 1 is .* context of 48"):
        prompts = [[{"role": "user", "content": "1"}], [{"role": "user", "content": "1" * 40}]]
        rollout(model, tokenizer, prompts, SamplingConfig(max_new_tokens=12))
