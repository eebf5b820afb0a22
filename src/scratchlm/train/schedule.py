"""Learning-rate schedules as a function of run *progress*, so step, token and time budgets share one code.

A run knows how far along it is as a fraction `progress` in [0, 1]: steps done / max_steps, tokens seen /
max_tokens, or seconds elapsed / max_time (whichever is furthest along when several are set). Writing the
schedules over progress instead of over steps is what lets a wall-clock budget decay the learning rate
on time: the run does not know in advance how many steps it will get, but it always knows its progress.

Warmup stays counted in optimizer steps, because its purpose (let Adam's second-moment estimates settle
before taking full-size steps) is about the number of updates, not about time.

Shapes:
- `cosine`: half a cosine from 1 down to `min_lr_ratio` over the whole run (Loshchilov & Hutter, SGDR).
- `wsd`: warmup-stable-decay: constant, then a linear decay to `min_lr_ratio` over the last
  `decay_fraction` of the run (Hu et al. 2024, MiniCPM; the shape the modded-nanogpt speedruns use).
- `constant`: 1 after warmup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scratchlm.errors import ScratchError

KINDS = ("cosine", "wsd", "constant")


@dataclass
class ScheduleConfig:
    kind: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # final lr = optim lr * min_lr_ratio (cosine and wsd)
    decay_fraction: float = 0.2  # wsd only: the final part of the run that decays

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ScratchError(f"schedule.kind {self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        if self.warmup_steps < 0:
            raise ScratchError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ScratchError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ScratchError(f"schedule.decay_fraction must be in (0, 1], got {self.decay_fraction}")


def lr_factor(cfg: ScheduleConfig, step: int, progress: float) -> float:
    """Multiplier on the base learning rate for optimizer step `step` (0-based) at `progress` in [0, 1].

    The warmup ramp and the decay shape multiply: during a long warmup the decay has barely started
    (factor ~1), and the product needs no knowledge of when warmup ends in time units.
    """
    p = min(max(progress, 0.0), 1.0)
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    low = cfg.min_lr_ratio
    if cfg.kind == "constant":
        shape = 1.0
    elif cfg.kind == "cosine":
        shape = low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * p))
    else:  # wsd
        start = 1.0 - cfg.decay_fraction
        shape = 1.0 if p <= start else 1.0 - (1.0 - low) * (p - start) / cfg.decay_fraction
    return warm * shape
