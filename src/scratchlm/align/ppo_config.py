"""`PPOConfig`: one RLHF run (a policy trained with PPO against a reward model), as a YAML recipe fills it.

One trainer step is one PPO minibatch update, so a rollout of `ppo.rollout_prompts` prompts is followed by
`ppo.epochs x ppo.minibatches` steps before the next is sampled; `budget.max_steps` counts those steps.

The defaults were chosen by measurement on the sentiment task (docs/benchmarks.md, "Issue 11"); TRL's
`PPOConfig` (kl_coef 0.05, cliprange 0.2, vf_coef 0.1, cliprange_value 0.2, gamma 1, lambda 0.95, 4 epochs,
temperature 0.7) and DeepSpeed-Chat (KL 0.1, reward clip 5, no whitening) are where they started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.errors import ScratchError
from scratchlm.train.config import (
    BudgetConfig,
    EvalConfig,
    OptimConfig,
    TrainingSections,
    load_stage_config,
    refuse_sharded,
)


@dataclass
class PPOSection:
    rollout_prompts: int = 32  # prompts sampled per rollout (one answer each)
    minibatches: int = 4  # each rollout is cut into this many minibatches, one optimizer step each
    epochs: int = 4  # passes over each rollout
    max_new_tokens: int = 64
    temperature: float = 1.0  # sampling, and the distribution whose ratio and KL are taken
    kl_coef: float = 0.05  # beta of the per-token KL penalty
    kl_estimator: str = "k1"  # k1 | k3
    adaptive_kl: bool = False  # Ziegler et al.'s controller towards kl_target (per answer)
    kl_target: float = 6.0
    kl_horizon: float = 10_000.0
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    reward_clip: float = 5.0  # |score| clipped to this (DeepSpeed-Chat); 0: off
    missing_eos_penalty: float = 0.0  # subtracted from the score of an answer that never closes its turn
    ptx_coef: float = 0.0  # InstructGPT's PPO-ptx: this times the pretraining LM loss is added
    ptx_corpus: str = ""  # its text ("": the policy's base run's corpus)
    ptx_rows: int = 4  # pretraining windows per step

    def __post_init__(self):
        if self.kl_estimator not in ("k1", "k3"):
            raise ScratchError(f"ppo.kl_estimator {self.kl_estimator!r}: use k1 or k3")
        for name in ("rollout_prompts", "minibatches", "epochs", "max_new_tokens"):
            if getattr(self, name) <= 0:
                raise ScratchError(f"ppo.{name} must be positive, got {getattr(self, name)}")
        if self.rollout_prompts % self.minibatches:
            raise ScratchError(
                f"ppo.rollout_prompts {self.rollout_prompts} is not divisible by ppo.minibatches "
                f"{self.minibatches}; change one of them"
            )
        if self.temperature <= 0:
            raise ScratchError("ppo.temperature must be > 0: PPO needs a sampling distribution")
        if self.kl_coef < 0 or self.cliprange <= 0 or self.vf_coef < 0:
            raise ScratchError("ppo.kl_coef and ppo.vf_coef must be >= 0, ppo.cliprange > 0")


@dataclass
class PPOEvalConfig(EvalConfig):
    every: int = 0
    prompts: int = 64  # held-out prompts answered at each evaluation (score, gold, KL)


@dataclass
class PPOConfig(TrainingSections):
    policy: str = ""  # the SFT run or model folder the policy starts from (and the frozen reference)
    reward: str = ""  # the reward-model run (frozen; the value model starts from it)
    prompts: str = ""  # a JSONL file, or task:SPEC (scratchlm.align.prompts)
    n_prompts: int = 2048  # prompts drawn from a task source
    judge: str = ""  # a gold judge to log beside the reward (sentiment | exact:SPEC); "" for none
    ppo: PPOSection = field(default_factory=PPOSection)
    eval: PPOEvalConfig = field(default_factory=PPOEvalConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adamw", lr=1e-4))
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(max_steps=160))

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_sharded("ppo", self.parallel)


def load_ppo_config(
    path: str | Path | None = None, overrides: list[str] = (), run_dir: str | Path | None = None
) -> PPOConfig:
    """Defaults <- YAML recipe <- `--set` overrides (resuming without a recipe: the run's config.yaml)."""
    return load_stage_config(
        PPOConfig,
        "ppo",
        path,
        overrides,
        run_dir,
        {"policy": "--policy SFT_RUN", "reward": "--reward RM_RUN", "prompts": "--prompts FILE"},
    )
