"""`RewardConfig`: one reward-model run (Bradley-Terry on a preference file), as a YAML recipe fills it in.

The shared sections (optim, schedule, budget, logging, checkpoint, ...) are the Trainer's; `data` says how
the preference file is split and batched, `loss` which of TRL's two extra terms to add, `eval` what to
measure beside the held-out loss. Recipes: configs/reward-*.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.errors import ScratchError
from scratchlm.train.config import BudgetConfig, EvalConfig, TrainingSections, load_stage_config
from scratchlm.train.optim import OptimConfig

BATCH_UNITS = ("groups", "pairs")


@dataclass
class RewardDataConfig:
    """A step takes whole groups (a ranking's K(K-1)/2 pairs, or one pair): InstructGPT sec. 3.5."""

    heldout: float = 0.1  # share of the prompts held out (by hash) for val_loss and accuracy
    batch_size: int = 16  # a step's size over all ranks and micro-steps, counted in `batch_unit`
    # groups: batch_size groups a step; pairs: whole groups up to batch_size pairs (a bigger group alone)
    batch_unit: str = "groups"
    grad_accum: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.heldout < 1.0:
            raise ScratchError(f"data.heldout is a share of the groups, in [0, 1), got {self.heldout}")
        if self.batch_unit not in BATCH_UNITS:
            raise ScratchError(f"data.batch_unit {self.batch_unit!r}: use groups or pairs")
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ScratchError("data.batch_size and data.grad_accum must be positive")


@dataclass
class RewardLossConfig:
    """-log sigmoid(r_chosen - r_rejected [- margin]) [+ coef * (r_chosen + r_rejected)^2]: TRL's terms."""

    margin: bool = False  # subtract each pair's `margin` field (Llama 2's margin loss, TRL's convention)
    # Eisenstein et al. 2023 (TRL's center_rewards_coefficient, 0.01 there): keeps rewards centred on 0
    center_rewards_coefficient: float = 0.0

    def __post_init__(self) -> None:
        if self.center_rewards_coefficient < 0:
            raise ScratchError(
                "loss.center_rewards_coefficient must be >= 0 (0: off), got "
                f"{self.center_rewards_coefficient}"
            )


@dataclass
class RewardEvalConfig(EvalConfig):
    every: int = 0
    sample_tokens: int = 0  # a reward model writes no samples
    # With `judge` set: the reward's Spearman correlation with gold on fresh answers of the base model.
    fresh_prompts: int = 64  # prompts answered once, at the start, by the base model
    prompts: str = ""  # their source: a JSONL file or task:SPEC (its held-out split); "": the prefs' prompts
    max_new_tokens: int = 64
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.fresh_prompts < 0 or self.max_new_tokens < 1 or self.temperature < 0:
            raise ScratchError(
                "eval.fresh_prompts must be >= 0, eval.max_new_tokens >= 1 and eval.temperature >= 0"
            )


@dataclass
class RewardConfig(TrainingSections):
    base: str = ""  # the SFT run or model folder the body starts from
    prefs: str = ""  # the preference file (scratchlm.align.preferences)
    judge: str = ""  # a gold judge for the Spearman figure (sentiment | exact:SPEC); "": none
    data: RewardDataConfig = field(default_factory=RewardDataConfig)
    loss: RewardLossConfig = field(default_factory=RewardLossConfig)
    eval: RewardEvalConfig = field(default_factory=RewardEvalConfig)
    # AdamW everywhere: Muon would orthogonalise the (1, d) head into a unit vector every step.
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=1e-4, weight_decay=0.0))
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(max_steps=100))


def load_reward_config(
    path: str | Path | None = None, overrides: list[str] = (), run_dir: str | Path | None = None
) -> RewardConfig:
    """Defaults <- YAML recipe <- `--set` overrides (resuming without a recipe: the run's config.yaml)."""
    return load_stage_config(
        RewardConfig, "reward", path, overrides, run_dir, {"base": "--base SFT_RUN", "prefs": "--prefs FILE"}
    )
