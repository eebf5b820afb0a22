"""Validation during training: loss in nats/token and bits per byte over the validation split, and a sample.

The validation split is cut into windows by the one function every evaluation uses
(`scratchlm.eval.scoring.rolling_windows`: consecutive windows of the model's context, the last one ending
at the split's end with full context) and scored by the same batched scorer as `scratchlm eval` and the
harness adapter, so a run's validation loss and `scratchlm eval`'s agree. `max_tokens` caps the number of
predicted tokens, so frequent evaluations stay cheap on big corpora.

Bits per byte makes runs with different tokenizers comparable: total nats / ln 2 / the UTF-8 bytes of
the text the predicted tokens decode to. Under torchrun each rank scores every world_size-th window and
the totals are summed, so evaluation is as parallel as training.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from scratchlm.eval.scoring import rolling_windows, score_continuations
from scratchlm.generate.config import SamplingConfig
from scratchlm.generate.engine import generate
from scratchlm.train.distributed import World, all_reduce_sum


def validation_loss(
    model: torch.nn.Module,
    tokens: np.ndarray,
    *,
    batch_size: int,
    max_tokens: int,
    autocast,  # () -> context manager (bf16 autocast or nothing)
    world: World,
) -> tuple[float, int]:
    """(mean nats per predicted token, number of predicted tokens) over the validation windows."""
    n_pred = max(0, len(tokens) - 1)
    if max_tokens:
        n_pred = min(n_pred, max_tokens)
    windows = rolling_windows(np.asarray(tokens[: n_pred + 1]).tolist(), model.config.context_length)
    mine = windows[world.rank :: world.size]
    # Every rank scores as many windows (some twice, the extra scores dropped), so every rank makes the
    # same number of forward passes: under FSDP each is a collective (blocks all-gather their weights).
    # The windows are all context-long but possibly the last, so equal counts make equal batches.
    padded = mine + windows[: -(-len(windows) // world.size) - len(mine)]
    was_training = model.training
    model.eval()
    scores = score_continuations(model, padded, batch_size=batch_size, autocast=autocast)[: len(mine)]
    model.train(was_training)
    (total,) = all_reduce_sum([-sum(logprob for logprob, _ in scores)], world)
    return total / max(1, n_pred), n_pred


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
    config = SamplingConfig(max_new_tokens=n_tokens, temperature=temperature, seed=seed, stop_at_eot=False)
    # The engine warns when a sample outgrows the context and its window slides: expected here, every time.
    engine_log = logging.getLogger("scratchlm.generate.engine")
    level = engine_log.level
    engine_log.setLevel(logging.ERROR)
    try:
        # Sharded weights (FSDP, ZeRO-3) decode through the model's own forward, whose hooks gather each
        # block's weights: `decode_steps` packs only whole ones (generate.packed.can_pack).
        return generate(model, tokenizer, [prompt], config)[0]
    finally:
        engine_log.setLevel(level)
