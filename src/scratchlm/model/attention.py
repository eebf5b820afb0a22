"""Causal self-attention with grouped-query heads, RoPE, optional QK-norm, and a KV cache.

Two implementations of the same formula, softmax(q k^T / sqrt(hd) + mask) v:
- `sdpa`: `torch.nn.functional.scaled_dot_product_attention`, which picks flash / memory-efficient
  kernels where the hardware has them;
- `reference`: the explicit masked softmax below, slow and obvious, which the tests compare against.

Grouped-query attention (Ainslie et al. 2023): n_heads query heads share n_kv_heads key/value heads;
query head h reads kv head h // (n_heads / n_kv_heads) (the `repeat_interleave` layout of Hugging Face's
`repeat_kv`, and of SDPA's `enable_gqa`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.model.config import ModelConfig
from scratchlm.model.kv_cache import KVCache
from scratchlm.model.layers import RMSNorm, apply_rope

# SDPA's enable_gqa arrived in torch 2.5; before it, the kv heads are repeated by hand.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, S, hd) -> (B, n_kv * n_rep, S, hd), each kv head repeated for its query heads."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Masked softmax attention written out: q (B, H, T, hd), k/v (B, KV, S, hd) -> (B, H, T, hd).

    `attn_mask` is boolean, broadcastable to (B, H, T, S), True where a query may look at a key;
    `is_causal` (only with T == S) is the lower-triangular mask.
    """
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if is_causal:
        T, S = scores.shape[-2:]
        assert T == S, "is_causal is only meaningful for a square score matrix"
        attn_mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v  # (B, H, T, hd)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """The same contract as `reference_attention`, through PyTorch's fused kernels."""
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1 and _SDPA_HAS_GQA:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=True
        )
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
    )


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.attn_impl = config.attn_impl
        self.dropout = config.dropout
        d, hd = config.d_model, config.head_dim
        self.q_proj = nn.Linear(d, config.n_heads * hd, bias=config.bias)
        self.k_proj = nn.Linear(d, config.n_kv_heads * hd, bias=config.bias)
        self.v_proj = nn.Linear(d, config.n_kv_heads * hd, bias=config.bias)
        self.o_proj = nn.Linear(config.n_heads * hd, d, bias=config.bias)
        # QK-norm (Dehghani et al. 2023; OLMo 2, Qwen 3): RMSNorm of each head's q and k before RoPE keeps
        # attention logits bounded, which steadies training at high learning rates.
        self.q_norm = RMSNorm(hd, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(hd, config.norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """x (B, T, d) -> (B, T, d). `rope` is (cos, sin) or None; masks as in `reference_attention`."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (B, KV, S, hd), S = cached + T
            k, v = k.to(q.dtype), v.to(q.dtype)
        attend = sdpa_attention if self.attn_impl == "sdpa" else reference_attention
        dropout_p = self.dropout if self.training else 0.0
        y = attend(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.o_proj(y)
