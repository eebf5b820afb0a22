"""Validation during training: loss in nats/token and bits per byte over the validation split, and a sample.

The validation split is cut into consecutive windows of the model's context (the metric the issue defines:
every validation token is predicted exactly once, the first tokens of each window from little context).
`max_tokens` caps the number of predicted tokens, so frequent evaluations stay cheap on big corpora.

Bits per byte makes runs with different tokenizers comparable: total nats / ln 2 / the UTF-8 bytes of
the text the predicted tokens decode to. Under torchrun each rank scores every world_size-th window and
the totals are summed, so evaluation is as parallel as training.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from scratchlm.train.distributed import World, all_reduce_sum


def window_starts(n_tokens: int, context: int, max_tokens: int = 0) -> tuple[list[int], int]:
    """Start offsets of the consecutive windows, and the number of tokens they predict.

    A split of n tokens predicts n - 1 of them (the first has no predecessor); the last window may be
    shorter than the context.
    """
    n_pred = max(0, n_tokens - 1)
    if max_tokens:
        n_pred = min(n_pred, max_tokens)
    return list(range(0, n_pred, context)), n_pred


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    tokens: np.ndarray,
    context: int,
    *,
    batch_size: int,
    max_tokens: int,
    device: torch.device,
    autocast,  # () -> context manager (bf16 autocast or nothing)
    world: World,
) -> tuple[float, int]:
    """(mean nats per predicted token, number of predicted tokens) over the validation windows."""
    starts, n_pred = window_starts(len(tokens), context, max_tokens)
    mine = starts[world.rank :: world.size]
    was_training = model.training
    model.eval()
    total = 0.0
    # Full windows go in batches; the one short window (if any) goes alone.
    full = [s for s in mine if s + context <= n_pred]
    short = [s for s in mine if s + context > n_pred]
    for i in range(0, len(full), batch_size):
        chunk = full[i : i + batch_size]
        rows = np.stack([tokens[s : s + context + 1] for s in chunk]).astype(np.int64)  # (b, T+1)
        total += _nats(model, torch.from_numpy(rows).to(device), autocast)
    for s in short:
        row = np.asarray(tokens[s : n_pred + 1], dtype=np.int64)[None]  # (1, n_pred - s + 1)
        total += _nats(model, torch.from_numpy(row).to(device), autocast)
    model.train(was_training)
    (total,) = all_reduce_sum([total], world)
    return total / max(1, n_pred), n_pred


def _nats(model, rows: torch.Tensor, autocast) -> float:
    inputs, targets = rows[:, :-1], rows[:, 1:]  # (b, T) each
    with autocast():
        logits = model(inputs)  # (b, T, V)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
    return float(loss)


def predicted_bytes(tokens: np.ndarray, n_pred: int, tokenizer) -> int:
    """UTF-8 bytes of the text that the predicted tokens (positions 1..n_pred) decode to."""
    text = tokenizer.decode(np.asarray(tokens[1 : n_pred + 1]).tolist())
    return len(text.encode("utf-8"))


def bits_per_byte(mean_nats: float, n_pred: int, n_bytes: int) -> float:
    return mean_nats * n_pred / math.log(2) / max(1, n_bytes)


def sample_text(model, tokenizer, prompt: str, n_tokens: int, temperature: float, seed: int) -> str:
    """A short continuation of `prompt`, drawn with its own seeded generator.

    Its own generator leaves the global RNG untouched, so evaluating does not change the training run
    that follows (a resumed run draws the same dropout masks and batches as an uninterrupted one).
    """
    from scratchlm.generate.engine import generate
    from scratchlm.generate.sampling import SamplingConfig

    config = SamplingConfig(max_new_tokens=n_tokens, temperature=temperature, seed=seed, stop_at_eot=False)
    # The engine warns when a sample outgrows the context and its window slides: expected here, every time.
    engine_log = logging.getLogger("scratchlm.generate.engine")
    level = engine_log.level
    engine_log.setLevel(logging.ERROR)
    try:
        return generate(model, tokenizer, [prompt], config)[0]
    finally:
        engine_log.setLevel(level)
