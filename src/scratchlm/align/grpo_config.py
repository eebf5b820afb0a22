"""`GRPOConfig`: one GRPO or RLOO run, as typed sections a YAML recipe fills in (configs/grpo-*).

The shared sections (optim, schedule, budget, logging, checkpoint, ...) are the Trainer's, as in SFT;
`rollout` says what is sampled each step, `loss` how the answers' rewards become a gradient. Names follow
TRL's `GRPOConfig` where it has one (`epsilon`, `epsilon_high`, `beta`, `loss_type`, `scale_rewards`,
`num_iterations`); `rollout.group` is its `num_generations`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.align.grpo import LOSS_TYPES, SCALES
from scratchlm.data.tasks import get_task
from scratchlm.errors import ScratchError
from scratchlm.train.config import (
    BudgetConfig,
    EvalConfig,
    TrainingSections,
    load_stage_config,
    refuse_sharded,
)
from scratchlm.train.optim import OptimConfig

ALGORITHMS = ("grpo", "rloo")


def require_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ScratchError(f"{name} {value!r} is unknown; use one of {', '.join(choices)}")


@dataclass
class RolloutSection:
    """Each optimizer step samples `group` answers to each of `prompts` training prompts (all ranks)."""

    prompts: int = 4  # prompts per rollout; rows = prompts x group
    group: int = 8  # answers per prompt, the baseline's sample (TRL's num_generations, default 8)
    max_new_tokens: int = 8  # longest answer (TRL's max_completion_length); an arithmetic answer is <= 5
    temperature: float = 1.0  # the policy's own distribution: exploration, and the ratio's denominator
    pool: int = 4096  # training prompts per task that the steps draw from
    grad_accum: int = 1  # micro-batches per step (rows / grad_accum each)

    def __post_init__(self) -> None:
        if self.group < 2:
            raise ScratchError(
                f"rollout.group {self.group} has no baseline: GRPO and RLOO compare each answer with the "
                "others to its prompt; use 2 or more (TRL's default is 8)"
            )
        if self.prompts <= 0 or self.max_new_tokens <= 0 or self.pool <= 0 or self.grad_accum <= 0:
            raise ScratchError("rollout.prompts, max_new_tokens, pool and grad_accum must be positive")
        if self.temperature <= 0:
            raise ScratchError(
                f"rollout.temperature must be > 0 (RL samples; 0 is greedy), got {self.temperature}"
            )


@dataclass
class LossSection:
    """How rewards become a gradient (scratchlm.align.grpo); the defaults are TRL 1.16's."""

    type: str = "dapo"  # token aggregation: dapo | grpo | dr_grpo (TRL's loss_type)
    scale_rewards: str = "auto"  # group | batch | none; auto: group for grpo, none for rloo (the papers')
    epsilon: float = 0.2  # the ratio's clip, 1 - epsilon .. 1 + epsilon_high
    epsilon_high: float | None = None  # None: = epsilon; DAPO's clip-higher uses 0.28
    beta: float = 0.0  # KL to the starting policy (0: no reference model is loaded); GRPO k3, RLOO k1
    num_iterations: int = 1  # optimizer steps on each rollout (TRL's num_iterations, GRPO's mu)

    def __post_init__(self) -> None:
        require_choice("loss.type", self.type, LOSS_TYPES)
        require_choice("loss.scale_rewards", self.scale_rewards, ("auto", *SCALES))
        if self.epsilon <= 0 or (self.epsilon_high is not None and self.epsilon_high <= 0):
            raise ScratchError("loss.epsilon and loss.epsilon_high must be > 0")
        if self.beta < 0:
            raise ScratchError(f"loss.beta must be >= 0 (0: no KL term), got {self.beta}")
        if self.num_iterations < 1:
            raise ScratchError(f"loss.num_iterations must be >= 1, got {self.num_iterations}")


@dataclass
class GRPOEvalConfig(EvalConfig):
    every: int = 50
    max_examples: int = 200  # held-out prompts per task answered by greedy decoding
    max_new_tokens: int = 16  # longest answer decoded for them
    max_rises: int = 0  # held-out exact match is noisy; a rise is not a divergence


@dataclass
class GRPOConfig(TrainingSections):
    policy: str = ""  # the SFT run or model folder to start from (and the KL's reference)
    algorithm: str = "grpo"  # grpo (Shao et al. 2024) | rloo (Ahmadian et al. 2024)
    tasks: list[str] = field(default_factory=lambda: ["arithmetic:digits=3,op=+"])  # prompts, equal shares
    reward: str = ""  # "": each task's exact-answer checker; else module:function or file.py:function
    rollout: RolloutSection = field(default_factory=RolloutSection)
    loss: LossSection = field(default_factory=LossSection)
    eval: GRPOEvalConfig = field(default_factory=GRPOEvalConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=3e-5, weight_decay=0.0))
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(max_time="10m"))
    # The ratio's denominator is the sampling log-prob, computed in fp32; a bf16 forward would move the
    # ratio off 1 by rounding alone (about 1e-2 in log-prob).
    precision: str = "fp32"

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_sharded(self.algorithm, self.parallel)
        require_choice("algorithm", self.algorithm, ALGORITHMS)
        if not self.tasks:
            raise ScratchError("grpo: no tasks; pass --task SPEC (e.g. arithmetic:digits=3,op=+)")
        for spec in self.tasks:
            task = get_task(spec)  # an unknown task or parameter fails here, before any model loads
            if not self.reward and not hasattr(task, "reward"):
                raise ScratchError(
                    f"task {spec} has no exact-answer checker to reward with; give --reward module:function"
                )

    @property
    def scale_rewards(self) -> str:
        """GRPO divides by the group's std; RLOO's advantage is the plain leave-one-out difference."""
        if self.loss.scale_rewards != "auto":
            return self.loss.scale_rewards
        return "group" if self.algorithm == "grpo" else "none"


def load_grpo_config(
    path: str | Path | None = None, overrides: list[str] = (), run_dir: str | Path | None = None
) -> GRPOConfig:
    """Defaults <- YAML recipe <- `--set` overrides (resuming without a recipe: the run's config.yaml)."""
    return load_stage_config(
        GRPOConfig, "grpo", path, overrides, run_dir, {"policy": "--policy SFT_RUN_OR_MODEL"}
    )
