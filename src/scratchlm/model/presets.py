"""Named model shapes: each preset is a row of data, a `ModelConfig`.

- `gpt2-124m`: GPT-2 small (Radford et al. 2019) as published: learned positions, LayerNorm with bias,
  GELU MLP of 4d, biases everywhere, tied embeddings, the 50257-token GPT-2 vocabulary, context 1024.
  Its parameter count is 124,439,808 (a test holds it there).
- `llama-*`: the modern recipe (LLaMA, Touvron et al. 2023): RoPE, RMSNorm, SwiGLU, no biases, grouped-
  query attention, tied embeddings (at these sizes the embedding is a large share of the parameters).
  Sizes are approximate totals with their vocabulary (4096 for the small ones, 32768 for 100m).
- `shakespeare-char`: a first guess for character-level Tiny Shakespeare (65 symbols); the tuned recipe
  lives in configs/shakespeare-char.yaml.
"""

from __future__ import annotations

from scratchlm.errors import ScratchError
from scratchlm.model.config import ModelConfig

_LLAMA = dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=True)

PRESETS: dict[str, ModelConfig] = {
    "gpt2-124m": ModelConfig(
        vocab_size=50257,
        context_length=1024,
        n_layers=12,
        d_model=768,
        n_heads=12,
        n_kv_heads=12,
        d_ff=3072,
        pos_encoding="learned",
        norm="layernorm",
        mlp="gelu",
        bias=True,
        tie_embeddings=True,
    ),
    # ~1.1M: 4 x (attn 49k + mlp 147k) + embedding 524k
    "llama-1m": ModelConfig(
        vocab_size=4096, context_length=256, n_layers=4, d_model=128, n_heads=4, n_kv_heads=2, **_LLAMA
    ),
    # ~11M: 6 x 1.57M + embedding 1.57M
    "llama-10m": ModelConfig(
        vocab_size=4096, context_length=512, n_layers=6, d_model=384, n_heads=6, n_kv_heads=2, **_LLAMA
    ),
    # ~31.6M: 10 x 2.95M + embedding 2.1M
    "llama-30m": ModelConfig(
        vocab_size=4096, context_length=1024, n_layers=10, d_model=512, n_heads=8, n_kv_heads=4, **_LLAMA
    ),
    # ~101M: 12 x 6.29M + embedding 25.2M
    "llama-100m": ModelConfig(
        vocab_size=32768, context_length=2048, n_layers=12, d_model=768, n_heads=12, n_kv_heads=4, **_LLAMA
    ),
    "shakespeare-char": ModelConfig(
        vocab_size=65, context_length=256, n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, **_LLAMA
    ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    """The preset called `name` (a fresh copy), with any fields overridden, e.g. vocab_size=..."""
    if name not in PRESETS:
        raise ScratchError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)
