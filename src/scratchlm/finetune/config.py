"""`SFTConfig`: one supervised fine-tuning run, as typed sections a YAML recipe fills in (configs/sft-*).

The shared sections (optim, schedule, budget, logging, checkpoint, ...) are the Trainer's, as in
pretraining; `data` says what to fine-tune on, `lora` whether to train an adapter instead of every weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.errors import ScratchError
from scratchlm.paths import expand_path
from scratchlm.train.config import BudgetConfig, EvalConfig, TrainingSections, load_stage_config


@dataclass
class SFTDataConfig:
    """The mixture: built-in tasks (`scratchlm.data.tasks` specs) and chat files, each with a weight."""

    tasks: list[str] = field(default_factory=lambda: ["arithmetic:digits=2,op=+"])
    files: list[str] = field(default_factory=list)  # JSONL messages / Alpaca / ShareGPT / chitchat / Parquet
    weights: list[float] = field(default_factory=list)  # one per task, then per file (empty: equal)
    examples: int = 20_000  # training conversations drawn from the mixture
    heldout: int = 200  # held-out conversations per task and records per chat file, for the figures
    ptx: float = 0.0  # share of each step's rows that are pretraining text (InstructGPT's "ptx")
    ptx_corpus: str = ""  # the corpus of that text ("": the base run's data.corpus)
    packing: bool = True  # several conversations a row, without cross-talk
    batch_size: int = 32  # rows per optimizer step, over all ranks and micro-steps
    grad_accum: int = 1
    overflow: str = "truncate"  # a conversation longer than the context: truncate its history | drop
    skip_invalid: bool = False  # bad records in files: skip and count them (else: stop at the first)

    def __post_init__(self) -> None:
        self.files = [expand_path(f, "data.files") for f in self.files]
        if not self.tasks and not self.files:
            raise ScratchError("sft data: give data.tasks or data.files (nothing to fine-tune on)")
        if self.weights and len(self.weights) != len(self.tasks) + len(self.files):
            raise ScratchError(
                f"data.weights has {len(self.weights)} entries for {len(self.tasks)} tasks and "
                f"{len(self.files)} files; give one weight each, or none"
            )
        if any(w < 0 for w in self.weights) or (self.weights and not sum(self.weights)):
            raise ScratchError("data.weights must be >= 0 and not all 0")
        if not 0.0 <= self.ptx < 1.0:
            raise ScratchError(f"data.ptx is a share of the rows, in [0, 1), got {self.ptx}")
        if self.overflow not in ("truncate", "drop"):
            raise ScratchError(f"data.overflow {self.overflow!r}: use truncate or drop")
        if self.batch_size <= 0 or self.grad_accum <= 0 or self.examples <= 0:
            raise ScratchError("data.batch_size, data.grad_accum and data.examples must be positive")


@dataclass
class LoRASection:
    """`lora.rank: 0` trains every weight; a rank > 0 trains a LoRA adapter (scratchlm.finetune.lora)."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=list)  # empty: the adapter's default projections


@dataclass
class SFTEvalConfig(EvalConfig):
    every: int = 0
    max_examples: int = 100  # held-out prompts per exact-answer task answered by greedy decoding
    max_new_tokens: int = 48  # longest answer decoded for them


@dataclass
class SFTConfig(TrainingSections):
    base: str = ""  # the pretrained run or model folder to start from
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    lora: LoRASection = field(default_factory=LoRASection)
    eval: SFTEvalConfig = field(default_factory=SFTEvalConfig)
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(max_time="5m"))


def load_sft_config(
    path: str | Path | None = None, overrides: list[str] = (), run_dir: str | Path | None = None
) -> SFTConfig:
    """Defaults <- YAML recipe <- `--set` overrides (resuming without a recipe: the run's config.yaml)."""
    return load_stage_config(SFTConfig, "sft", path, overrides, run_dir, {"base": "--base RUN_OR_MODEL"})
