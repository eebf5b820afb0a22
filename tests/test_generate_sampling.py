"""Each logits processor against an obvious per-row Python loop."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.errors import ScratchError
from scratchlm.generate.sampling import (
    SamplingConfig,
    apply_repetition_penalty,
    make_generator,
    sample_next,
    top_k_filter,
    top_p_filter,
)


def _logits(b=3, v=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, v, generator=g) * 3


def test_repetition_penalty_matches_loop():
    logits = _logits()
    seen = torch.rand(logits.shape, generator=torch.Generator().manual_seed(1)) < 0.4
    out = apply_repetition_penalty(logits, seen, 1.7)
    for b in range(logits.size(0)):
        for v in range(logits.size(1)):
            x = logits[b, v].item()
            want = (x / 1.7 if x > 0 else x * 1.7) if seen[b, v] else x
            assert out[b, v].item() == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_top_k_matches_loop():
    logits = _logits()
    for k in (1, 3, 17, 50):
        out = top_k_filter(logits, k)
        for b in range(logits.size(0)):
            row = logits[b].tolist()
            keep = set(sorted(range(len(row)), key=lambda i: -row[i])[:k])
            for i, x in enumerate(row):
                assert out[b, i].item() == (x if i in keep else -math.inf)


def test_top_p_matches_loop():
    logits = _logits(v=23)
    for p in (0.05, 0.3, 0.75, 0.95, 1.0):
        out = top_p_filter(logits, p)
        for b in range(logits.size(0)):
            probs = torch.softmax(logits[b].double(), -1).tolist()
            order = sorted(range(len(probs)), key=lambda i: -probs[i])
            keep, mass = set(), 0.0
            for i in order:  # smallest prefix whose mass reaches p
                keep.add(i)
                mass += probs[i]
                if mass >= p:
                    break
            kept = {i for i in range(len(probs)) if out[b, i].item() != -math.inf}
            assert kept == keep, (p, b)


def test_greedy_is_argmax_and_ignores_filters():
    logits = _logits()
    cfg = SamplingConfig(temperature=0, top_k=2, top_p=0.1)
    assert torch.equal(sample_next(logits, cfg), logits.argmax(-1))


def test_sampling_distribution_follows_temperature():
    # One row, three tokens; the empirical frequencies must follow softmax(logits / T).
    logits = torch.tensor([[1.0, 0.0, -1.0]]).repeat(20000, 1)
    cfg = SamplingConfig(temperature=2.0)
    ids = sample_next(logits, cfg, generator=make_generator(0, "cpu"))
    freq = torch.bincount(ids, minlength=3).double() / ids.numel()
    want = torch.softmax(logits[0].double() / 2.0, -1)
    assert torch.allclose(freq, want, atol=0.015)


def test_top_k_one_sampling_equals_greedy_and_seed_reproduces():
    logits = _logits(b=8)
    assert torch.equal(sample_next(logits, SamplingConfig(top_k=1)), logits.argmax(-1))
    cfg = SamplingConfig(temperature=1.3, top_p=0.9, seed=5)
    a = sample_next(logits, cfg, generator=make_generator(5, "cpu"))
    b = sample_next(logits, cfg, generator=make_generator(5, "cpu"))
    assert torch.equal(a, b)


def test_penalty_changes_the_greedy_choice():
    logits = torch.tensor([[2.0, 1.5, -3.0]])
    seen = torch.tensor([[True, False, False]])
    cfg = SamplingConfig(temperature=0, repetition_penalty=2.0)
    assert sample_next(logits, cfg, seen=seen).item() == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -1},
        {"top_k": 0},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"repetition_penalty": 0},
        {"truncate": "right"},
        {"stop": [""]},
        {"max_new_tokens": -2},
    ],
)
def test_bad_config_is_a_user_error(kwargs):
    with pytest.raises(ScratchError):
        SamplingConfig(**kwargs)
