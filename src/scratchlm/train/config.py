"""`PretrainConfig`: everything one pretraining run needs, as typed sections a YAML recipe fills in.

A recipe in `configs/` mirrors these dataclasses; any field is overridable with `--set a.b=c`; the run
folder keeps the fully resolved copy (`config.yaml`, model section expanded to every field), so a run can
always be reproduced from its own folder.

The `model` section is a mapping rather than a `ModelConfig`, because it may name a preset and change a
few fields of it (`{preset: llama-10m, n_layers: 6}`); `resolve_model_config` turns it into the real,
validated `ModelConfig`. The vocabulary size always comes from the tokenizer the run prepares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from scratchlm.config import from_dict, load_config
from scratchlm.errors import ScratchError
from scratchlm.model import ModelConfig, get_preset
from scratchlm.model.config import swiglu_hidden
from scratchlm.train.distributed import PARALLEL_MODES
from scratchlm.train.optim import OptimConfig
from scratchlm.train.run_dir import RunDir
from scratchlm.train.schedule import ScheduleConfig


@dataclass
class DataConfig:
    """Corpus and tokenizer to train on, and how batches are cut from the shards.

    `batch_size` counts sequences per optimizer step over all ranks and micro-steps together, so the same
    recipe trains the same model under `torchrun` with any number of processes: each rank takes
    `batch_size / (world_size * grad_accum)` sequences per micro-step.

    Context curriculum ("sequence length warmup", Li et al. 2022): with `short_context` set, the first
    `short_context_until` of the budget trains on windows of `short_context` tokens, `batch_size` of them
    a step, and the rest at the model's context with `batch_size * short_context / context` sequences,
    so every step holds the same number of tokens. Evaluation, samples and the saved model always use
    the model's context.
    """

    corpus: str = "shakespeare"  # registry name, file, folder or .jsonl (scratchlm.data.load_corpus)
    # Documents of a folder corpus (names relative to it) that are the validation split, never trained
    # on, tokenizer included; empty: a hashed 10% of the documents (one document: its last 10%).
    heldout: list[str] = field(default_factory=list)
    tokenizer: str = "char"  # char | bpe | path to a saved tokenizer folder
    vocab_size: int = 4096  # bpe only: vocabulary to train
    batch_size: int = 32  # sequences per step (of short_context tokens while that phase lasts)
    grad_accum: int = 1
    mode: str = "random"  # random windows | packed (consecutive windows in order)
    shared_cache: bool = True  # prepared shards live in the user cache, shared by runs on the same data
    # Context curriculum: shorter windows train faster per token (attention's cost per token grows with
    # the window); the final part adapts the model to its full context, the windows validation scores.
    short_context: int = 0  # 0 = off; else < model.context_length and dividing it, e.g. 64 for 256
    short_context_until: float = 0.0  # fraction of the budget (run progress) trained at short_context
    # char only: characters the vocabulary must hold beyond the corpus (an SFT base needs the tasks' digits)
    extra_chars: str = ""
    chat_tokens: bool = False  # char only: reserve <|endoftext|> and the chat role tokens for SFT and chat

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ScratchError("data.batch_size and data.grad_accum must be positive")
        if self.mode not in ("random", "packed"):
            raise ScratchError(f"data.mode {self.mode!r} is unknown; use random or packed")
        if self.short_context < 0:
            raise ScratchError(f"data.short_context must be >= 0 (0: off), got {self.short_context}")
        if bool(self.short_context) != bool(self.short_context_until):
            raise ScratchError(
                "data.short_context and data.short_context_until go together: set both "
                f"(e.g. 64 and 0.8) or neither, got {self.short_context} and {self.short_context_until}"
            )
        if self.short_context and not 0.0 < self.short_context_until < 1.0:
            raise ScratchError(
                "data.short_context_until is the fraction of the budget at data.short_context and must be "
                f"in (0, 1), got {self.short_context_until}"
            )


@dataclass
class BudgetConfig:
    """When the run ends: the first budget reached wins (0 or "" means unset). At least one is required."""

    max_steps: int = 0
    max_tokens: int = 0
    max_time: str = ""  # "150s", "3m", "1.5h" or plain seconds

    def seconds(self) -> float:
        return parse_duration(self.max_time) if self.max_time else 0.0

    def __post_init__(self) -> None:
        self.max_time = "" if str(self.max_time).strip() in ("", "0", "None") else str(self.max_time)
        if self.max_time:
            parse_duration(self.max_time)  # fail at load time, not at the end of the run
        if self.max_steps < 0 or self.max_tokens < 0:
            raise ScratchError("budget.max_steps and budget.max_tokens must be >= 0")


@dataclass
class EvalConfig:
    """Validation every `every` optimizer steps (0: only at the end of the run)."""

    every: int = 250
    max_tokens: int = 0  # cap on validation tokens per evaluation; 0 = the whole validation split
    sample_tokens: int = 200  # length of the generated sample shown at each evaluation (0: none)
    sample_prompt: str = "\n"
    temperature: float = 0.8
    max_rises: int = 3  # this many rises of the validation loss in a row is divergence (0: never)


@dataclass
class LoggingConfig:
    every: int = 10  # write a train record (and refresh the progress bar) every N steps
    progress: bool = True
    tensorboard: bool = True  # used only when the tensorboard package is installed


@dataclass
class CheckpointConfig:
    every: int = 0  # save every N steps (0: only at the end and on SIGINT/SIGTERM)
    keep_last: int = 2
    keep_best: bool = True  # also keep the checkpoint with the lowest validation loss

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise ScratchError("checkpoint.keep_last must be >= 1 (resume needs at least one checkpoint)")


@dataclass
class TrainerConfig:
    """The settings every stage shares; a stage's config builds one from its own sections."""

    budget: BudgetConfig = field(default_factory=BudgetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval_every: int = 0  # evaluate every N steps (0: only at the end)
    max_rises: int = 3  # consecutive rises of val_loss taken as divergence (0: never)
    seed: int = 0
    precision: str = "bf16"  # bf16 autocast | fp32
    grad_clip: float = 1.0  # max gradient norm of each trainable model (0: off)
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: str = "auto"  # auto | none | ddp | fsdp | deepspeed (scratchlm.train.parallel, .zero)
    fsdp_cpu_offload: bool = False
    zero_stage: int = 2


@dataclass
class TrainingSections:
    """The sections of every stage's recipe that the Trainer reads; a stage's config adds its own.

    `eval` is the stage's evaluation section: the Trainer reads only `eval.every` and `eval.max_rises`.
    """

    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "bf16"  # bf16 autocast for matmuls (weights and optimizer stay fp32) | fp32
    grad_clip: float = 1.0  # max gradient norm of each trainable model (0: off)
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    # Under torchrun: auto (DDP when there are several processes) | ddp | fsdp (sharded parameters,
    # gradients and optimizer state; distributed checkpoints) | none. See scratchlm.train.parallel.
    parallel: str = "auto"
    fsdp_cpu_offload: bool = False  # fsdp: keep the shards and the optimizer step in host memory
    zero_stage: int = 2  # deepspeed: ZeRO 1 (optimizer state), 2 (+ gradients), 3 (+ parameters) sharded

    def __post_init__(self) -> None:
        if self.precision not in ("bf16", "fp32"):
            raise ScratchError(f"precision {self.precision!r} is unknown; use bf16 or fp32")
        if self.parallel not in PARALLEL_MODES:
            raise ScratchError(f"parallel {self.parallel!r} is unknown; use {' | '.join(PARALLEL_MODES)}")
        if self.fsdp_cpu_offload and self.parallel != "fsdp":
            raise ScratchError("fsdp_cpu_offload needs parallel: fsdp (it offloads FSDP's shards)")
        if self.zero_stage not in (1, 2, 3):
            raise ScratchError(f"zero_stage {self.zero_stage} is not a ZeRO stage; use 1, 2 or 3")
        if self.parallel == "deepspeed" and self.optim.name != "adamw":
            raise ScratchError(
                f"optim.name {self.optim.name} cannot run under DeepSpeed: ZeRO flattens parameters into "
                "1-D partitions and Muon needs whole matrices; use optim.name=adamw, or parallel=fsdp"
            )
        if self.parallel == "deepspeed" and self.compile:
            raise ScratchError("compile with parallel: deepspeed is not supported; drop one of them")

    def trainer(self) -> TrainerConfig:
        """The sections the Trainer reads, as one TrainerConfig."""
        return TrainerConfig(
            budget=self.budget, optim=self.optim, schedule=self.schedule, logging=self.logging,
            checkpoint=self.checkpoint, eval_every=self.eval.every, max_rises=self.eval.max_rises,
            seed=self.seed, precision=self.precision, grad_clip=self.grad_clip, compile=self.compile,
            activation_checkpointing=self.activation_checkpointing, parallel=self.parallel,
            fsdp_cpu_offload=self.fsdp_cpu_offload, zero_stage=self.zero_stage,
        )  # fmt: skip


OBJECTIVES = ("causal_lm",)  # what `scratchlm pretrain` can train; SFT has its own config and command


@dataclass
class PretrainConfig(TrainingSections):
    objective: str = "causal_lm"  # next-token prediction over token shards (scratchlm.train.causal_lm)
    model: dict = field(default_factory=dict)  # {preset: NAME, field: value, ...} -> ModelConfig
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ScratchError(
                f"objective {self.objective!r} does not exist; scratchlm pretrain trains "
                f"{', '.join(OBJECTIVES)}"
            )


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float) -> float:
    """'150s' / '3m' / '1.5h' / '90' -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|min|h)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise ScratchError(f"time budget {text!r} is not a duration; write e.g. 150s, 3m or 1.5h")
    return float(m.group(1)) * _UNITS[m.group(2) or ""]


def resolve_model_config(section: dict, vocab_size: int):
    """The `model` section (optional preset + field overrides) -> a validated ModelConfig."""
    data = dict(section)
    preset = data.pop("preset", None)
    base_config = get_preset(preset) if preset else ModelConfig()
    base = base_config.to_dict()
    # n_kv_heads and d_ff are derived from n_heads / d_model when left unset. If the base derived them,
    # derive them again from the overridden shape (width 256 over a width-128 base needs a new d_ff).
    if base_config.n_kv_heads == base_config.n_heads and "n_kv_heads" not in data:
        base["n_kv_heads"] = None
    derived_ff = (
        swiglu_hidden(base_config.d_model) if base_config.mlp == "swiglu" else 4 * base_config.d_model
    )
    if base_config.d_ff == derived_ff and "d_ff" not in data:
        base["d_ff"] = None
    base.update(data)
    base["vocab_size"] = vocab_size
    return from_dict(ModelConfig, base, prefix="model.")


def check_short_context(data: DataConfig, context_length: int) -> None:
    """data.short_context against the model's context, known once the model section is resolved."""
    short = data.short_context
    if short and (short >= context_length or context_length % short):
        raise ScratchError(
            f"data.short_context {short} must be shorter than model.context_length {context_length} and "
            f"divide it (e.g. {max(1, context_length // 4)}); or 0 to train at the model's context all along"
        )


def load_pretrain_config(
    path: str | Path | None = None, overrides: list[str] = (), run_dir: str | Path | None = None
) -> PretrainConfig:
    """Defaults <- YAML recipe <- `--set` overrides; budgets are checked here, before any work is done.

    Without a recipe, `run_dir` (a run being resumed) supplies its own resolved config.yaml."""
    return load_stage_config(PretrainConfig, "pretrain", path, overrides, run_dir)


def load_stage_config(cls, stage: str, path, overrides, run_dir, required: dict[str, str] | None = None):
    """A training stage's config: defaults <- YAML recipe <- `--set` overrides (resuming without a recipe:
    the run's own config.yaml), then the budget and each `required` field checked (name -> the flag that
    sets it), before any work is done."""
    if path is None and run_dir is not None and RunDir(run_dir).config_path.is_file():
        path = RunDir(run_dir).config_path
    cfg = load_config(cls, path, overrides)
    check_budget(cfg)
    for name, flag in (required or {}).items():
        if not getattr(cfg, name):
            raise ScratchError(f"{stage}: no {name}; pass {flag} (or set {name}: in the recipe)")
    return cfg


def check_budget(cfg: PretrainConfig) -> None:
    b = cfg.budget
    if not (b.max_steps or b.max_tokens or b.max_time):
        raise ScratchError(
            "no budget: set budget.max_steps, budget.max_tokens or budget.max_time (--max-time)"
        )


def refuse_sharded(stage: str, parallel: str) -> None:
    """Rollouts decode as many steps as their longest answer, which differs between ranks; under FSDP or
    DeepSpeed every forward is a collective, so the ranks would wait on each other for ever."""
    if parallel in ("fsdp", "deepspeed"):
        raise ScratchError(
            f"{stage}: parallel {parallel} is not supported (each rank's rollouts decode a different number "
            "of steps, and a sharded forward is a collective); use parallel: ddp"
        )
