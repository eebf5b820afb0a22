"""What a training stage gives the `Trainer`: an objective. Pretraining, SFT, reward, DPO, PPO each write one.

An objective holds its models by name (some trainable, some frozen) and supplies four things:

- **batches** `batches(step, progress) -> StepBatches`: this rank's micro-batches for one optimizer step
  (the trainer accumulates over them), with the step's tokens and model FLOPs for the budget and MFU.
- **loss** `loss(models, batch) -> (loss_sum, n_valid)`: the *sum* of the loss over the micro-batch and
  how many tokens (or examples) it counts; `count(batch)` gives that number before any forward pass.
  The trainer divides by the count summed over all micro-batches and ranks (torchtitan's
  `global_valid_tokens`), so a micro-batch with nothing to predict adds nothing instead of 0/0 = NaN.
- **evaluation** `evaluate(step) -> dict`: figures for the metrics log; `val_loss`, when present, picks
  the best checkpoint and watches for divergence.
- **state** `state_dict()` / `load_state_dict()`: whatever it needs for an exact resume (loader
  positions), as tensors and plain data.

and, so a run folder holds usable models, `write_model(name, folder, extra)` for each trainable model
(optionally `read_model(name, folder)` to resume from it, when it writes more than the module's weights:
a LoRA run writes the merged model and its adapter).
`name` goes into every checkpoint, so a run is never resumed by another objective.

`loss_ceiling` (or None) is a loss no working run reaches: above it the trainer calls the run diverged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch


@dataclass
class StepBatches:
    """One optimizer step's work on this rank."""

    micro: list[Any]  # the micro-batches, in order; the trainer syncs gradients after the last
    tokens: int  # tokens the whole step consumes over all ranks (budget.max_tokens, tokens/s)
    flops: float = 0.0  # model FLOPs of the whole step over all ranks (MFU); 0: not reported
    # Extra fields for this step's train record. The trainer writes it after the step, so `loss` may add
    # figures it computes on the way (PPO's clip fraction, DPO's rewards/margins) to the same dict.
    info: dict = field(default_factory=dict)


class Objective(Protocol):
    name: str
    models: dict[str, torch.nn.Module]
    trainable: tuple[str, ...]  # names in `models` the trainer optimizes; the first is the run's model
    loss_ceiling: float | None

    def batches(self, step: int, progress: float) -> StepBatches: ...

    def count(self, batch) -> int: ...

    def loss(self, models: dict[str, torch.nn.Module], batch) -> tuple[torch.Tensor, int]: ...

    def evaluate(self, step: int) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def write_model(self, name: str, folder: Path, extra: dict) -> dict[str, str] | None: ...

    def resolved_config(self) -> dict: ...
