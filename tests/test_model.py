"""The transformer: configuration checks, causality, attention twins, GQA, RoPE, sizes, training."""

from __future__ import annotations

import math

import pytest
import torch

from scratchlm.errors import ScratchError
from scratchlm.model import PRESETS, ModelConfig, Transformer, autocast_context, get_preset, pick_device
from scratchlm.model.attention import reference_attention, sdpa_attention
from scratchlm.model.layers import apply_rope, rope_cos_sin


def tiny(**changes) -> ModelConfig:
    base = dict(vocab_size=37, context_length=32, n_layers=2, d_model=32, n_heads=4, n_kv_heads=2)
    return ModelConfig(**{**base, **changes})


# One config per architectural option, so each code path is exercised by the generic tests below.
VARIANTS = {
    "llama-gqa": tiny(),
    "mha": tiny(n_kv_heads=4),
    "mqa": tiny(n_kv_heads=1),
    "gpt2-like": tiny(pos_encoding="learned", norm="layernorm", mlp="gelu", bias=True, n_kv_heads=4),
    "sinusoidal-relu2": tiny(pos_encoding="sinusoidal", mlp="relu2", tie_embeddings=False),
    "qk-norm": tiny(qk_norm=True, bias=True),
    "ngram": tiny(ngram_orders=[3, 2], ngram_buckets=211, qk_norm=True),
}


def make(config: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(config).eval()


# --- configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, words",
    [
        (dict(d_model=30, n_heads=4), "not divisible by n_heads"),
        (dict(n_heads=4, n_kv_heads=3), "not divisible by n_kv_heads"),
        (dict(d_model=36, n_heads=4, n_kv_heads=4), "even head dimension"),
        (dict(pos_encoding="alibi"), "unknown pos_encoding"),
        (dict(norm="batchnorm"), "unknown norm"),
        (dict(mlp="geglu"), "unknown mlp"),
        (dict(attn_impl="flash"), "unknown attn_impl"),
        (dict(n_layers=0), "n_layers must be a positive integer"),
        (dict(dropout=1.0), "dropout"),
        (dict(ngram_orders=[1]), "ngram_orders must be integers from 2 to 8"),
        (dict(ngram_orders=[3, 3]), "repeats an order"),
        (dict(ngram_buckets=0), "ngram_buckets must be a positive integer"),
    ],
)
def test_invalid_config_is_refused_with_a_clear_message(changes, words):
    with pytest.raises(ScratchError, match=words):
        tiny(**changes)


def test_odd_head_dim_is_fine_without_rope():
    assert tiny(d_model=36, n_heads=4, n_kv_heads=4, pos_encoding="learned").head_dim == 9


def test_config_round_trips_through_dict_and_refuses_unknown_keys():
    cfg = tiny(qk_norm=True, rope_theta=500000.0)
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.d_ff == cfg.d_ff and again.n_kv_heads == 2
    with pytest.raises(ScratchError, match="unknown key model.n_layer"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_layer": 3})


def test_defaults_resolve_d_ff_and_kv_heads():
    assert ModelConfig(d_model=128, n_heads=4, mlp="swiglu").d_ff == 384  # 2/3 * 4 * 128 rounded up to 64
    assert ModelConfig(d_model=128, n_heads=4, mlp="gelu").d_ff == 512
    assert ModelConfig(n_heads=4).n_kv_heads == 4


# --- sizes and cost -------------------------------------------------------------------------------------


def test_gpt2_124m_has_the_published_parameter_count():
    with torch.device("meta"):
        model = Transformer(get_preset("gpt2-124m"))
    assert model.num_params() == 124_439_808
    assert model.num_params(include_embeddings=False) == 124_439_808 - 50257 * 768 - 1024 * 768


@pytest.mark.parametrize(
    "name, low, high",
    [
        ("llama-1m", 0.8e6, 1.6e6),
        ("llama-10m", 8e6, 13e6),
        ("llama-30m", 25e6, 36e6),
        ("llama-100m", 85e6, 115e6),
    ],
)
def test_llama_presets_have_about_their_named_size(name, low, high):
    with torch.device("meta"):
        model = Transformer(get_preset(name))
    assert low <= model.num_params() <= high
    assert model.config.n_kv_heads < model.config.n_heads  # grouped-query


def test_every_preset_builds_and_unknown_is_refused():
    for name in PRESETS:
        assert get_preset(name) == PRESETS[name] and get_preset(name) is not PRESETS[name]
    assert get_preset("shakespeare-char", dropout=0.2).dropout == 0.2
    with pytest.raises(ScratchError, match="unknown model preset"):
        get_preset("gpt5")


@pytest.mark.parametrize("variant", ["llama-gqa", "gpt2-like", "sinusoidal-relu2"])
def test_flops_per_token_is_6n_plus_attention_term(variant):
    cfg = VARIANTS[variant]
    model = make(cfg)
    # N: every weight a token multiplies by = all Linear layers (lm_head included) plus norm gains/biases.
    linear = sum(
        m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        for m in model.modules()
        if isinstance(m, torch.nn.Linear)
    )
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    expected = 6 * (linear + norms) + 12 * cfg.n_layers * cfg.d_model * cfg.context_length
    assert model.flops_per_token() == expected
    assert model.flops_per_token(training=False) == pytest.approx(expected / 3)


def test_tied_embeddings_share_one_tensor_and_count_once():
    tied, untied = make(tiny()), make(tiny(tie_embeddings=False))
    assert tied.lm_head.weight is tied.token_embedding.weight
    assert untied.num_params() - tied.num_params() == 37 * 32


def test_residual_projections_are_initialized_smaller():
    model = make(tiny(n_layers=8, d_model=64, n_heads=4, n_kv_heads=4))
    q_std = model.layers[0].attention.q_proj.weight.std().item()
    o_std = model.layers[0].attention.o_proj.weight.std().item()
    assert q_std == pytest.approx(0.02, rel=0.1)
    assert o_std == pytest.approx(0.02 / math.sqrt(16), rel=0.1)


# --- behaviour ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_causality_later_tokens_never_change_earlier_logits(variant):
    model = make(VARIANTS[variant])
    x = torch.randint(0, 37, (2, 20))
    base = model(x)
    for t in (0, 7, 19):
        changed = x.clone()
        changed[:, t] = (changed[:, t] + 1) % 37
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_sdpa_equals_reference_attention_in_the_model(variant):
    model = make(VARIANTS[variant])
    x = torch.randint(0, 37, (3, 24))
    fast = model(x)
    model.set_attn_impl("reference")
    slow = model(x)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)


@pytest.mark.parametrize("n_kv", [4, 2, 1])
@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_equals_reference_attention_on_random_tensors(n_kv, masked):
    torch.manual_seed(1)
    q = torch.randn(2, 4, 9, 8)
    k, v = torch.randn(2, n_kv, 13, 8), torch.randn(2, n_kv, 13, 8)
    mask = torch.rand(2, 1, 9, 13) > 0.3 if masked else None
    if masked:
        mask[..., 0] = True  # every query sees at least one key
    torch.testing.assert_close(
        sdpa_attention(q, k, v, mask), reference_attention(q, k, v, mask), rtol=0, atol=1e-5
    )


def explicit_multi_head_attention(attention, x: torch.Tensor) -> torch.Tensor:
    """Multi-head causal attention one head at a time, straight from the paper, x (B, T, d) -> (B, T, d)."""
    B, T, _ = x.shape
    hd, H, KV = attention.head_dim, attention.n_heads, attention.n_kv_heads
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    heads = []
    for h in range(H):
        g = h // (H // KV)  # the kv head this query head reads
        q = x @ attention.q_proj.weight[h * hd : (h + 1) * hd].T
        k = x @ attention.k_proj.weight[g * hd : (g + 1) * hd].T
        v = x @ attention.v_proj.weight[g * hd : (g + 1) * hd].T
        scores = (q @ k.transpose(1, 2) / math.sqrt(hd)).masked_fill(~causal, float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v)
    return torch.cat(heads, dim=-1) @ attention.o_proj.weight.T


def test_attention_with_as_many_kv_heads_as_heads_is_plain_multi_head_attention():
    model = make(tiny(n_kv_heads=4, pos_encoding="learned"))  # no RoPE: the textbook formula exactly
    attention = model.layers[0].attention
    x = torch.randn(2, 11, 32)
    out = attention(x, None, None, True)
    torch.testing.assert_close(out, explicit_multi_head_attention(attention, x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("pos_encoding", ["rope", "learned"])
def test_gqa_model_equals_mha_model_with_repeated_kv_weights(pos_encoding):
    gqa = make(tiny(n_heads=4, n_kv_heads=2, pos_encoding=pos_encoding, bias=True))
    mha = make(tiny(n_heads=4, n_kv_heads=4, pos_encoding=pos_encoding, bias=True), seed=1)
    hd, n_rep = gqa.config.head_dim, 2
    state = gqa.state_dict()
    for name, tensor in list(state.items()):
        if ".k_proj." in name or ".v_proj." in name:  # rows [g*hd:(g+1)*hd] -> repeated for each query head
            blocks = tensor.reshape(gqa.config.n_kv_heads, hd, *tensor.shape[1:])
            state[name] = blocks.repeat_interleave(n_rep, dim=0).reshape(-1, *tensor.shape[1:])
    mha.load_state_dict(state)
    x = torch.randint(0, 37, (2, 18))
    torch.testing.assert_close(gqa(x), mha(x), rtol=0, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    hd = 16
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)

    def score(m: int, n: int) -> torch.Tensor:
        cos_q, sin_q = rope_cos_sin(torch.tensor([[m]]), hd, 10000.0, torch.float64)
        cos_k, sin_k = rope_cos_sin(torch.tensor([[n]]), hd, 10000.0, torch.float64)
        return (apply_rope(q.double(), cos_q, sin_q) * apply_rope(k.double(), cos_k, sin_k)).sum()

    for m, n in [(5, 2), (9, 9), (3, 17)]:
        for shift in (1, 40, 1000):
            # angles are formed in float32 (as in Hugging Face): position p carries ~p * 6e-8 rad of rounding
            torch.testing.assert_close(score(m + shift, n + shift), score(m, n), rtol=0, atol=2e-4)
    assert not torch.isclose(score(5, 2), score(5, 3))
    # and position 0 is the identity rotation
    cos, sin = rope_cos_sin(torch.tensor([[0]]), hd, 10000.0, torch.float32)
    torch.testing.assert_close(apply_rope(q, cos, sin), q)


def test_rope_pairs_dimension_i_with_i_plus_half_head_dim():
    """The Hugging Face Llama convention: the (i, i + hd/2) pair rotates as one complex number."""
    hd, pos = 8, 3
    x = torch.zeros(1, 1, 1, hd)
    x[..., 1] = 1.0  # the real part of pair 1
    cos, sin = rope_cos_sin(torch.tensor([[pos]]), hd, 10000.0, torch.float32)
    out = apply_rope(x, cos, sin).flatten()
    angle = pos * 10000.0 ** (-2 * 1 / hd)
    expected = torch.zeros(hd)
    expected[1], expected[1 + hd // 2] = math.cos(angle), math.sin(angle)
    torch.testing.assert_close(out, expected)


def test_input_longer_than_the_context_is_refused():
    model = make(tiny(context_length=8))
    with pytest.raises(ScratchError, match="exceeds the model's context_length 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_dropout_acts_only_in_training_mode():
    model = make(tiny(dropout=0.5))
    x = torch.randint(0, 37, (2, 10))
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.allclose(model(x), model(x))


def test_bf16_autocast_on_cpu_stays_close_to_float32():
    model = make(tiny())
    x = torch.randint(0, 37, (2, 16))
    with autocast_context("cpu", "bfloat16"):
        low = model(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), model(x), rtol=0, atol=0.05)


@pytest.mark.parametrize("variant", ["llama-gqa", "gpt2-like"])
def test_tiny_model_overfits_one_batch(variant):
    torch.manual_seed(0)
    model = Transformer(VARIANTS[variant]).train()
    x = torch.randint(0, 37, (4, 17))
    inputs, targets = x[:, :-1], x[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(120):
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, loss.item()  # from ln(37) = 3.6 at the start


def test_device_choice_and_autocast():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else pick_device("auto").type)
    with pytest.raises(ScratchError, match="unknown device"):
        pick_device("tpu-ish")
    if not torch.cuda.is_available():
        with pytest.raises(ScratchError, match="no CUDA GPU is available"):
            pick_device("cuda")
    with autocast_context("cpu", "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ScratchError, match="unknown dtype"):
        autocast_context("cpu", "float8")


# --- hashed n-gram input embeddings ---------------------------------------------------------------------


def slow_ngram_buckets(
    row: list[int], positions: list[int], n: int, buckets: int, start_id: int
) -> list[int]:
    """The n-gram hash written out per token: the tokens t-n+1..t (start_id before position 0)."""
    from scratchlm.model.ngram import _MULTIPLIERS

    out = []
    for t, token in enumerate(row):
        value = token % buckets
        for k in range(1, n):
            before = row[t - k] if positions[t] >= k else start_id
            value = (value * _MULTIPLIERS[k - 1] + before) % buckets
        out.append(value)
    return out


def test_ngram_bucket_ids_match_the_hash_written_out():
    model = make(VARIANTS["ngram"])
    ids = torch.randint(0, 37, (3, 12))
    positions = torch.arange(12).expand(3, 12).clone()
    positions[1] = torch.arange(12) - 4  # a left-padded row: 4 pads, its text starts at slot 4
    emb = model.ngram_embedding
    got = emb.bucket_ids(ids, positions)
    for order, table_ids in zip(emb.orders, got):
        for b in range(3):
            row, pos = ids[b].tolist(), positions[b].tolist()
            want = slow_ngram_buckets(row, pos, order, 211, start_id=37)
            assert table_ids[b].tolist() == want, (order, b)
    # The first real token of the padded row sees only the start id before it, never a pad.
    assert got[0][1, 4] == slow_ngram_buckets([int(ids[1, 4])], [0], 2, 211, 37)[0]


def test_ngram_embedding_changes_the_logits_and_is_counted_as_an_embedding():
    with_ngram, plain = make(VARIANTS["ngram"]), make(tiny(qk_norm=True))
    ids = torch.randint(0, 37, (2, 10))
    assert with_ngram.num_params(include_embeddings=False) == plain.num_params(include_embeddings=False)
    assert with_ngram.num_params() == plain.num_params() + 2 * 211 * 32
    with torch.no_grad():
        before = with_ngram(ids)
        with_ngram.ngram_embedding.tables[0].weight.zero_()
        with_ngram.ngram_embedding.tables[1].weight.zero_()
        with_ngram.load_state_dict(
            {k: v for k, v in plain.state_dict().items()}, strict=False
        )  # same seed, same other weights: zero n-gram tables give the plain model
        assert not torch.allclose(before, with_ngram(ids))
        torch.testing.assert_close(with_ngram(ids), plain(ids))
