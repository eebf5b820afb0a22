"""The KV cache and padded batches: incremental decoding must equal recomputing everything."""

from __future__ import annotations

import pytest
import torch

from scratchlm.errors import ScratchError
from scratchlm.model import ModelConfig, Transformer

BASE = dict(vocab_size=41, context_length=40, n_layers=2, d_model=32, n_heads=4)
VARIANTS = {
    "mha": ModelConfig(**BASE, n_kv_heads=4),
    "gqa": ModelConfig(**BASE, n_kv_heads=2, qk_norm=True),
    "mqa-reference": ModelConfig(**BASE, n_kv_heads=1, attn_impl="reference"),
    "learned-gelu": ModelConfig(
        **BASE, n_kv_heads=4, pos_encoding="learned", norm="layernorm", mlp="gelu", bias=True
    ),
    "sinusoidal": ModelConfig(**BASE, n_kv_heads=2, pos_encoding="sinusoidal"),
    "ngram": ModelConfig(**BASE, n_kv_heads=2, qk_norm=True, ngram_orders=[2, 4], ngram_buckets=101),
}


def make(name: str) -> Transformer:
    torch.manual_seed(0)
    return Transformer(VARIANTS[name]).eval()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_cache_stores_only_kv_heads(name):
    model = make(name)
    cache = model.new_cache(3)
    cfg = model.config
    assert len(cache.keys) == cfg.n_layers
    assert cache.keys[0].shape == (3, cfg.n_kv_heads, cfg.context_length, cfg.head_dim)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_decoding_with_the_cache_equals_full_recompute_at_every_step(name):
    model = make(name)
    seq = torch.randint(0, 41, (2, 30))
    cache = model.new_cache(2)
    prompt = 7
    with torch.no_grad():
        logits = model(seq[:, :prompt], cache=cache)
        torch.testing.assert_close(logits, model(seq[:, :prompt]), rtol=0, atol=1e-5)
        for t in range(prompt, seq.shape[1]):
            step = model(seq[:, t : t + 1], cache=cache)  # (B, 1, V)
            full = model(seq[:, : t + 1])[:, -1:]  # recompute the whole prefix
            torch.testing.assert_close(step, full, rtol=0, atol=1e-5)
    assert len(cache) == seq.shape[1]


def test_cache_accepts_chunks_of_several_tokens():
    model = make("gqa")
    seq = torch.randint(0, 41, (2, 25))
    cache = model.new_cache(2)
    with torch.no_grad():
        chunks = [model(seq[:, a:b], cache=cache) for a, b in [(0, 5), (5, 6), (6, 14), (14, 25)]]
        torch.testing.assert_close(torch.cat(chunks, 1), model(seq), rtol=0, atol=1e-5)


def test_cache_overflow_and_learned_positions_past_the_context_are_refused():
    model = make("gqa")
    cache = model.new_cache(1, max_len=8)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), cache=cache)
        with pytest.raises(ScratchError, match="KV cache full"):
            model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ScratchError, match="learned positions"):
        make("learned-gelu").new_cache(1, max_len=41)


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A left-padded batch: ids (B, S), attention_mask (B, S) bool, positions (B, S) counting real tokens."""
    width = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    return ids, mask, positions


@pytest.mark.parametrize("name", list(VARIANTS))
def test_left_padded_batch_row_equals_the_prompt_alone(name):
    model = make(name)
    torch.manual_seed(1)
    prompts = [torch.randint(1, 41, (n,)).tolist() for n in (9, 3, 6)]
    continuation = torch.randint(1, 41, (3, 5))  # the same next tokens fed to every row
    ids, mask, positions = left_pad(prompts)
    with torch.no_grad():
        # without a cache: one padded forward pass
        batched = model(ids, positions=positions, attention_mask=mask)
        cache = model.new_cache(3)
        prefill = model(ids, cache=cache, positions=positions, attention_mask=mask)
        torch.testing.assert_close(prefill, batched, rtol=0, atol=1e-5)
        steps = [model(continuation[:, i : i + 1], cache=cache) for i in range(5)]  # the cache remembers
        for row, prompt in enumerate(prompts):
            n = len(prompt)
            alone = model(torch.tensor([prompt + continuation[row].tolist()]))[0]  # (n + 5, V)
            torch.testing.assert_close(batched[row, -n:], alone[:n], rtol=0, atol=1e-5)
            for i, step in enumerate(steps):
                torch.testing.assert_close(step[row, 0], alone[n + i], rtol=0, atol=1e-5)
    assert torch.isfinite(batched).all()  # pad queries attend to themselves: no NaN anywhere


def test_explicit_masks_during_decoding_match_the_remembered_ones():
    model = make("gqa")
    ids, mask, positions = left_pad([[5, 6, 7, 8], [9, 10]])
    nxt = torch.tensor([[11], [12]])
    with torch.no_grad():
        a, b = model.new_cache(2), model.new_cache(2)
        model(ids, cache=a, positions=positions, attention_mask=mask)
        model(ids, cache=b, positions=positions, attention_mask=mask)
        implicit = model(nxt, cache=a)
        full_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], 1)
        explicit = model(nxt, cache=b, positions=positions[:, -1:] + 1, attention_mask=full_mask)
    torch.testing.assert_close(implicit, explicit, rtol=0, atol=0)
    with pytest.raises(ScratchError, match="attention_mask covers 3 positions"):
        model(nxt, cache=b, attention_mask=torch.ones(2, 3, dtype=torch.bool))


def test_reset_cache_is_reusable():
    model = make("mha")
    seq = torch.randint(0, 41, (1, 12))
    cache = model.new_cache(1)
    with torch.no_grad():
        first = model(seq, cache=cache)
        cache.reset()
        again = model(seq, cache=cache)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
