"""The one typed description of a model's shape: `ModelConfig`.

Every choice the architecture offers is a field here (positional encoding, norm, MLP, grouped-query
heads, ...), so a preset is a row of data and a model folder's `config.json` is `to_dict()` of this.
Invalid combinations fail at construction with a `ScratchError`, never later inside a matmul.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from scratchlm.errors import ScratchError

POS_ENCODINGS = ("rope", "learned", "sinusoidal")
NORMS = ("rmsnorm", "layernorm")
MLPS = ("swiglu", "gelu", "relu2")
ATTN_IMPLS = ("sdpa", "reference")


def swiglu_hidden(d_model: int, multiple_of: int = 64) -> int:
    """Hidden width of a SwiGLU MLP with the same parameter count as a 4*d GELU MLP.

    SwiGLU has three matrices instead of two, so LLaMA (Touvron et al. 2023, sec. 2.2) takes 2/3 of 4d,
    rounded up to a multiple that keeps matmuls aligned.
    """
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass
class ModelConfig:
    """Shape and flavour of a decoder-only transformer.

    `n_kv_heads` None means multi-head attention (= n_heads); 1 is multi-query; between is grouped-query.
    `d_ff` None means 4*d_model for gelu/relu2 and `swiglu_hidden(d_model)` for swiglu. Both are resolved
    in `__post_init__`, so `to_dict()` always records explicit numbers.
    `attn_impl` picks SDPA (fast) or the explicit masked softmax (the reference the tests compare against).
    `ngram_orders` adds hashed n-gram input embeddings (e.g. [3]: the last three tokens), see
    `model/ngram.py`; empty (the default) is a plain Llama/GPT input.
    """

    vocab_size: int = 65
    context_length: int = 256
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_ff: int | None = None
    pos_encoding: str = "rope"
    rope_theta: float = 10000.0
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "swiglu"
    qk_norm: bool = False
    tie_embeddings: bool = True
    bias: bool = False
    dropout: float = 0.0
    init_std: float = 0.02
    attn_impl: str = "sdpa"
    ngram_orders: list[int] = field(default_factory=list)
    ngram_buckets: int = 8192

    def __post_init__(self) -> None:
        self.ngram_orders = sorted(self.ngram_orders or [])
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = swiglu_hidden(self.d_model) if self.mlp == "swiglu" else 4 * self.d_model
        self._validate()

    def _validate(self) -> None:
        def bad(msg: str) -> ScratchError:
            return ScratchError(f"model config: {msg}")

        for name in ("vocab_size", "context_length", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(f"{name} must be a positive integer, got {value!r}")
        for name, allowed in (
            ("pos_encoding", POS_ENCODINGS),
            ("norm", NORMS),
            ("mlp", MLPS),
            ("attn_impl", ATTN_IMPLS),
        ):
            if getattr(self, name) not in allowed:
                raise bad(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.d_model % self.n_heads:
            raise bad(
                f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}; "
                "pick n_heads that divides d_model"
            )
        if self.n_heads % self.n_kv_heads:
            raise bad(
                f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}; "
                "each key/value head must serve the same number of query heads"
            )
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise bad(f"RoPE needs an even head dimension, got d_model/n_heads = {self.head_dim}")
        if self.pos_encoding == "sinusoidal" and self.d_model % 2:
            raise bad(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad(f"dropout must be in [0, 1), got {self.dropout}")
        if any(not isinstance(n, int) or isinstance(n, bool) or not 2 <= n <= 8 for n in self.ngram_orders):
            raise bad(f"ngram_orders must be integers from 2 to 8 (2 = bigram), got {self.ngram_orders!r}")
        if len(set(self.ngram_orders)) != len(self.ngram_orders):
            raise bad(f"ngram_orders repeats an order: {self.ngram_orders!r}")
        if not isinstance(self.ngram_buckets, int) or self.ngram_buckets <= 0:
            raise bad(f"ngram_buckets must be a positive integer, got {self.ngram_buckets!r}")
        if self.rope_theta <= 0 or self.norm_eps <= 0 or self.init_std <= 0:
            raise bad("rope_theta, norm_eps and init_std must be positive")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Build from a mapping (e.g. a folder's config.json); unknown keys are refused by name."""
        from scratchlm.config import from_dict

        return from_dict(cls, dict(data), prefix="model.")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
