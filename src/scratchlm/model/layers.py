"""The building blocks around attention: norms, MLPs and positional encodings.

Each is a few lines on purpose: a reader should see the formula. Parameter names (`weight`,
`gate_proj`, `up_proj`, `down_proj`) follow the Hugging Face Llama layout so export is a renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.model.config import ModelConfig


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019): LayerNorm without centering or bias.

    Computed in float32 whatever the input dtype (as Llama does), since the mean of squares of bf16
    activations loses too much precision; the result is cast back.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.d_model
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class PlainMLP(nn.Module):
    """down(act(up(x))) with act = GELU (GPT-2, tanh approximation) or ReLU^2 (So et al. 2021, Primer)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind = config.mlp
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h, approximate="tanh") if self.kind == "gelu" else F.relu(h).square()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        return self.down_proj(self.activation(self.up_proj(x)))


def make_mlp(config: ModelConfig) -> nn.Module:
    return SwiGLU(config) if config.mlp == "swiglu" else PlainMLP(config)


# --- Rotary position embedding (Su et al. 2021, RoFormer) -------------------------------------------------
#
# Convention: "rotate half". Dimension i of a head is paired with dimension i + head_dim/2 and the pair is
# rotated by angle pos * theta^(-2i/head_dim). This is the layout Hugging Face Llama uses (`rotate_half`),
# so q/k projection weights export to `LlamaForCausalLM` as they are, with no row permutation. (Meta's
# original code rotates interleaved pairs (2i, 2i+1); converting between the two is a fixed permutation of
# the q and k output rows.)


def rope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """theta^(-2i/head_dim) for i in [0, head_dim/2): the rotation speed of each pair, float32."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta**exponents)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of each token's angles, (B, T) int positions -> two (B, 1, T, head_dim) tensors.

    Computed from the positions on the fly (no table), so per-row positions of a left-padded batch cost
    nothing extra; the angles are formed in float32 and only then cast.
    """
    inv_freq = rope_inv_freq(head_dim, theta, positions.device)  # (hd/2,)
    angles = positions.float()[..., None] * inv_freq  # (B, T, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (B, T, hd): pair i and i + hd/2 share an angle
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + hd/2) pair of x (B, H, T, hd) by its angle: x*cos + rotate_half(x)*sin."""
    return x * cos + rotate_half(x) * sin


def sinusoidal_embedding(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """The fixed encoding of "Attention Is All You Need" (sec. 3.5): (B, T) -> (B, T, d_model).

    PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(same), computed from positions directly.
    """
    i = torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)
    inv_freq = torch.exp(-math.log(10000.0) * i / d_model)  # (d/2,)
    angles = positions.float()[..., None] * inv_freq  # (B, T, d/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # interleave: (B, T, d)
