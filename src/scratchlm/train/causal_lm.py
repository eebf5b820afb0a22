"""Pretraining: next-token cross-entropy over token shards as an objective, and `pretrain()`, which trains it.

    from scratchlm.train import load_pretrain_config, pretrain
    result = pretrain(load_pretrain_config("shakespeare-char", ["budget.max_time=60s"]), "runs/char")

The batches: each phase of the run has a loader that serves a rank's whole step (all micro-batches) at
once, so the tokens of a step do not depend on grad_accum or world_size: the three settings train on
the same data. Phase i draws the stream of seed + i, so with the curriculum off the one loader is the one
runs always had.

Context curriculum (`data.short_context`, sequence length warmup, Li et al. 2022): the run is one or two
phases, each with its own loader of windows at its context; the phase of a step is a function of run
progress, and both loaders' positions are the objective's state, so the trainer knows nothing of it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from scratchlm.data import TokenLoader, load_tokens
from scratchlm.errors import ScratchError
from scratchlm.model import Transformer
from scratchlm.model.device import autocast_context
from scratchlm.model.folder import write_model_files
from scratchlm.train import distributed
from scratchlm.train.config import PretrainConfig, check_budget, check_short_context, resolve_model_config
from scratchlm.train.evaluate import bits_per_byte, predicted_bytes, sample_text, validation_loss
from scratchlm.train.objective import StepBatches
from scratchlm.train.prepare import prepare_run_data
from scratchlm.train.run_dir import RunDir
from scratchlm.train.trainer import RunResult, run_stage

# A loss this many times a uniform guess's, ln(vocab), means the run diverged: an untrained model starts
# near 1x; with optim.lr=1e30 the char model's validation loss reached 2.8e30.
CEILING_VS_UNIFORM = 3.0


def pretrain(config: PretrainConfig, out_dir: str | Path, resume: bool = False, say=print) -> RunResult:
    """Train `config` into the run folder `out_dir` (continuing its newest intact checkpoint if `resume`)."""
    check_budget(config)
    build = lambda world, run, say: CausalLM(config, run, world, world.device, say)  # noqa: E731
    return run_stage(config, out_dir, resume, say, build)


@dataclass
class _Phase:
    """A stretch of the run trained at one context: a rank's loader and how its rows split per micro-step."""

    context: int
    micro_batch: int  # sequences per micro-step on this rank
    loader: TokenLoader  # serves the rank's rows of a whole step (grad_accum micro-batches)
    flops_per_step: float  # training FLOPs of the whole step over all ranks (MFU)


class CausalLM:
    name = "causal_lm"
    trainable = ("model",)

    def __init__(
        self, cfg: PretrainConfig, run: RunDir, world: distributed.World, device: torch.device, say=print
    ):
        """Prepare the data and build the model (the trainer has seeded the RNGs already)."""
        self.cfg, self.world, self.device = cfg, world, device
        self.tokens_per_step = 0
        _micro_batch(
            cfg.data.batch_size, "data.batch_size", world, cfg.data.grad_accum
        )  # before any data work
        shard_dir, self.tokenizer = prepare_run_data(cfg.data, run.path, world, say)
        self.model_config = resolve_model_config(cfg.model, self.tokenizer.vocab_size)
        context = self.model_config.context_length
        check_short_context(cfg.data, context)
        plan = _phase_plan(cfg, context)  # (context, sequences per step) of each phase
        what = "the long phase's batch (data.batch_size x data.short_context / model.context_length)"
        micro = [_micro_batch(rows, what, world, cfg.data.grad_accum) for _, rows in plan]
        self.model = Transformer(self.model_config).to(device)
        self.models = {"model": self.model}
        self.phases = []
        for index, ((phase_context, _), b) in enumerate(zip(plan, micro)):
            loader = TokenLoader(
                shard_dir, "train", b * cfg.data.grad_accum, phase_context, seed=cfg.seed + index,
                rank=world.rank, world_size=world.size, mode=cfg.data.mode, device=device,
                expect_fingerprint=self.tokenizer.fingerprint(),
            )  # fmt: skip
            self.tokens_per_step = plan[0][0] * plan[0][1]  # the same in every phase
            flops = self.tokens_per_step * self.model.flops_per_token(
                training=True, context_length=phase_context
            )
            self.phases.append(_Phase(phase_context, b, loader, flops))
        self.val_tokens = load_tokens(shard_dir, "val")
        self._val_bytes = None
        self.loss_ceiling = CEILING_VS_UNIFORM * math.log(self.model_config.vocab_size)

    def resolved_config(self) -> dict:
        """The config with the model section expanded to every ModelConfig field."""
        return dataclasses.asdict(dataclasses.replace(self.cfg, model=self.model_config.to_dict()))

    # ---- batches and loss -------------------------------------------------------------------------

    def phase_at(self, progress: float) -> _Phase:
        # Progress only grows in a run, so a step or token budget switches at the same step every time
        # (the resume tests rely on it). Off: short_context_until is 0 and the one phase runs.
        return self.phases[0] if progress < self.cfg.data.short_context_until else self.phases[-1]

    def batches(self, step: int, progress: float):
        phase = self.phase_at(progress)
        inputs, targets = phase.loader.next_batch()  # (accum * b, T) each
        b = phase.micro_batch
        micro = [(inputs[i : i + b], targets[i : i + b]) for i in range(0, len(inputs), b)]  # (b, T) each
        return StepBatches(micro, self.tokens_per_step, phase.flops_per_step, {"context": phase.context})

    def count(self, batch) -> int:
        return batch[1].numel()  # every target position counts: shards hold no padding

    def loss(self, models, batch) -> tuple[torch.Tensor, int]:
        inputs, targets = batch
        logits = models["model"](inputs)  # (b, T, V)
        loss_sum = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
        return loss_sum, targets.numel()

    # ---- evaluation, state, files -----------------------------------------------------------------

    def evaluate(self, step: int) -> dict:
        cfg = self.cfg
        # The model's context, in batches of the last phase's micro-batch (whose windows are that long),
        # so evaluation needs no more memory than a training step at the model's context.
        autocast = self._autocast
        val_loss, n_pred = validation_loss(
            self.model, self.val_tokens, batch_size=self.phases[-1].micro_batch,
            max_tokens=cfg.eval.max_tokens, autocast=autocast, world=self.world,
        )  # fmt: skip
        if self._val_bytes is None:
            self._val_bytes = predicted_bytes(self.val_tokens, n_pred, self.tokenizer)
        figures = {
            "val_loss": val_loss,
            "val_bpb": bits_per_byte(val_loss, n_pred, self._val_bytes),
            "sample": "",
        }
        if cfg.eval.sample_tokens > 0:
            # Every rank samples, with the same seed, and rank 0's text is logged: under FSDP each forward
            # pass is a collective (every block all-gathers its weights), so one rank alone would hang.
            sample = sample_text(
                self.model, self.tokenizer, cfg.eval.sample_prompt, cfg.eval.sample_tokens,
                cfg.eval.temperature, seed=cfg.seed + step,
            )  # fmt: skip
            figures["sample"] = sample if self.world.is_main else ""
        return figures

    def _autocast(self):
        return autocast_context(self.device, "bfloat16" if self.cfg.precision == "bf16" else "float32")

    def state_dict(self) -> dict:
        return {"phases": [phase.loader.state_dict() for phase in self.phases]}

    def load_state_dict(self, state: dict) -> None:
        states = state["phases"]
        if len(states) != len(self.phases):
            raise ScratchError(
                f"cannot resume the loader: the checkpoint has {len(states)} data phase(s) but this config "
                f"has {len(self.phases)}; resume with the same data.short_context"
            )
        for phase, saved in zip(self.phases, states):
            phase.loader.load_state_dict(saved)

    def write_model(self, name: str, folder: Path, extra: dict) -> dict[str, str]:
        return write_model_files(folder, self.model, self.tokenizer, extra=extra)["files"]


def _phase_plan(cfg: PretrainConfig, context: int) -> list[tuple[int, int]]:
    """(context, sequences per step) of each phase. The long phase keeps the short phase's tokens per step,
    so the curriculum changes the window length, not the batch in tokens the recipe tuned."""
    short, batch = cfg.data.short_context, cfg.data.batch_size
    if not short:
        return [(context, batch)]
    if batch * short % context:
        raise ScratchError(
            f"data.batch_size {batch} x data.short_context {short} / model.context_length {context} is not "
            f"a whole number of sequences; make data.batch_size a multiple of {context // short}"
        )
    return [(short, batch), (context, batch * short // context)]


def _micro_batch(rows: int, what: str, world: distributed.World, accum: int) -> int:
    """Sequences per micro-step on one rank for a step of `rows` sequences (`what` names them)."""
    per_rank = rows // (world.size * accum)
    if per_rank == 0 or per_rank * world.size * accum != rows:
        raise ScratchError(
            f"{what} {rows} is not divisible by world_size {world.size} x grad_accum {accum}; "
            "change one of them"
        )
    return per_rank
