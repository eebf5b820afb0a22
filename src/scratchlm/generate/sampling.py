"""Choosing the next token from the model's logits: greedy, temperature, top-k, top-p, repetition penalty.

Each processor is a small pure function on a `(B, V)` logits tensor, so a test can hold it against an
obvious loop. `sample_next` chains them in the usual order (penalty, temperature, top-k, top-p, then draw),
the order Hugging Face's `generate` applies them, so the same settings mean the same thing in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from scratchlm.errors import ScratchError


@dataclass
class SamplingConfig:
    """How to decode. `temperature == 0` means greedy (argmax); filters then have no effect.

    `stop` strings end a row's text (the stop string itself is not returned); `stop_at_eot` ends it at the
    tokenizer's `<|endoftext|>`. A prompt longer than the model's context is cut from the left with a
    notice (`truncate="left"`) or refused (`truncate="error"`).
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_at_eot: bool = True
    truncate: str = "left"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ScratchError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ScratchError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ScratchError(f"top_k must be >= 1 (or unset), got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ScratchError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ScratchError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.truncate not in ("left", "error"):
            raise ScratchError(f"truncate must be 'left' or 'error', got {self.truncate!r}")
        if any(s == "" for s in self.stop):
            raise ScratchError("a stop string is empty; give non-empty --stop values")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019, eq. 1, as HF applies it): for every token already seen,
    divide a positive logit by `penalty`, multiply a negative one, so `penalty > 1` always makes it
    less likely. `seen` is a `(B, V)` bool mask, kept by the caller so each step costs O(V), not O(T)."""
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)  # (B, V)
    return torch.where(seen, penalized, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    assert temperature > 0, "temperature 0 is greedy: take the argmax instead"
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the `k` largest logits of each row (ties at the k-th value are kept too); the rest -> -inf."""
    if k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
    probability sums to at least `p`. A token is dropped when the mass strictly before it in sorted
    order already reaches `p`; the most likely token is therefore always kept."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (B, V)
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    config: SamplingConfig,
    *,
    seen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from `(B, V)` logits; returns `(B,)` int64 ids."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.greedy:
        return logits.argmax(dim=-1)
    logits = apply_temperature(logits, config.temperature)
    if config.top_k is not None:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p is not None:
        logits = top_p_filter(logits, config.top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A seeded generator on the sampling device (CUDA draws need a CUDA generator), or None (global RNG)."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
