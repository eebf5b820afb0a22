"""`DPOConfig`: one DPO run, as typed sections a YAML recipe fills in (configs/dpo-*).

The shared sections (optim, schedule, budget, logging, checkpoint, ...) are the Trainer's; `policy` and
`prefs` say what to train on, `loss`, `beta` and `label_smoothing` which preference loss
(scratchlm.align.dpo), `data` how the pairs are batched and held out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.errors import ScratchError
from scratchlm.train.config import BudgetConfig, EvalConfig, TrainingSections, load_stage_config
from scratchlm.train.optim import OptimConfig

LOSSES = ("sigmoid", "ipo", "hinge")


@dataclass
class DPODataConfig:
    """How the pairs of the preference file are held out and batched."""

    heldout: int = 100  # records held out for val_loss and accuracy (a ranking's pairs stay together)
    batch_size: int = 16  # pairs per optimizer step, over all ranks and micro-steps
    grad_accum: int = 1

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ScratchError("data.batch_size and data.grad_accum must be positive")
        if self.heldout < 0:
            raise ScratchError(f"data.heldout counts records and must be >= 0, got {self.heldout}")


@dataclass
class DPOEvalConfig(EvalConfig):
    every: int = 0
    max_rises: int = 0  # DPO's held-out loss rises once it over-fits: that is a finding, not a divergence


@dataclass
class DPOConfig(TrainingSections):
    policy: str = ""  # the SFT run or model folder: the policy starts from it
    reference: str = ""  # the frozen reference ("": the policy's starting model, DPO's usual choice)
    prefs: str = ""  # the preference file: JSONL pairs or rankings (scratchlm.align.preferences)
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo | hinge
    beta: float = 0.1  # strength of the KL anchor to the reference (IPO's tau)
    label_smoothing: float = 0.0  # cDPO's epsilon: the share of labels taken to be flipped (sigmoid only)
    data: DPODataConfig = field(default_factory=DPODataConfig)
    # A tenth of SFT's AdamW lr: at 1e-3 a 1M-parameter char model over-fits 1,350 pairs within 50 steps
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=3e-4, weight_decay=0.0))
    eval: DPOEvalConfig = field(default_factory=DPOEvalConfig)
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(max_time="3m"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ScratchError(f"loss {self.loss!r} is unknown; use one of {', '.join(LOSSES)}")
        if not self.beta > 0:
            raise ScratchError(f"beta must be > 0 (it scales the implicit reward), got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ScratchError(
                f"label_smoothing is the share of flipped labels, in [0, 0.5), got {self.label_smoothing}"
            )
        if self.label_smoothing and self.loss != "sigmoid":
            raise ScratchError(
                f"label_smoothing applies to the sigmoid loss only, not {self.loss}; set it to 0"
            )


def load_dpo_config(
    path: str | Path | None = None, overrides: list[str] = (), run_dir: str | Path | None = None
) -> DPOConfig:
    """Defaults <- YAML recipe <- `--set` overrides (resuming without a recipe: the run's config.yaml)."""
    return load_stage_config(
        DPOConfig, "dpo", path, overrides, run_dir, {"policy": "--policy SFT_RUN", "prefs": "--prefs FILE"}
    )
