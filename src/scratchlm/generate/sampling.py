"""Choosing the next token from the model's logits: greedy, temperature, top-k, top-p, repetition penalty.

Each processor is a small pure function on a `(B, V)` logits tensor, so a test can hold it against an
obvious loop. `process_logits` chains them in the usual order (penalty, temperature, top-k, top-p), the
order Hugging Face's `generate` applies them, so the same settings mean the same thing in both;
`sample_next` then draws, and `sample_next_logprobs` also says how likely the draw was.

`SamplingConfig` lives in `scratchlm.generate.config` (no torch: the command line reads it for its flags)
and is importable from here too.
"""

from __future__ import annotations

import torch

from scratchlm.generate.config import SamplingConfig

__all__ = [
    "SamplingConfig",
    "apply_repetition_penalty",
    "apply_temperature",
    "make_generator",
    "process_logits",
    "sample_next",
    "sample_next_logprobs",
    "top_k_filter",
    "top_p_filter",
]


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


def process_logits(
    logits: torch.Tensor, config: SamplingConfig, *, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """`(B, V)` logits -> the float32 `(B, V)` logits of the distribution a token is drawn from.

    Greedy stops after the penalty: it takes the argmax, which temperature and filters do not move."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.greedy:
        return logits
    logits = apply_temperature(logits, config.temperature)
    if config.top_k is not None:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p is not None:
        logits = top_p_filter(logits, config.top_p)
    return logits


def sample_next(
    logits: torch.Tensor,
    config: SamplingConfig,
    *,
    seen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from `(B, V)` logits; returns `(B,)` int64 ids."""
    return sample_next_logprobs(logits, config, seen=seen, generator=generator)[0]


def sample_next_logprobs(
    logits: torch.Tensor,
    config: SamplingConfig,
    *,
    seen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_next`, plus each pick's float32 log-probability under the distribution it was drawn from:
    `(B,)` ids, `(B,)` log-probs. Greedy draws from a point mass, so its log-probs are 0.0."""
    processed = process_logits(logits, config, seen=seen)  # (B, V)
    if config.greedy:
        ids = processed.argmax(dim=-1)
        return ids, torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    probs = torch.softmax(processed, dim=-1)  # (B, V)
    ids = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
    # log p = z - logsumexp(z): exact for the tiny probabilities that log(probs) would round to -inf.
    logprobs = processed.gather(-1, ids).squeeze(-1) - torch.logsumexp(processed, dim=-1)  # (B,)
    return ids.squeeze(-1), logprobs


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A seeded generator on the sampling device (CUDA draws need a CUDA generator), or None (global RNG)."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
