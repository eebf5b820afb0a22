"""The pretraining loop: `pretrain(config, out_dir, resume=False) -> RunResult`.

One optimizer step:
    for each of grad_accum micro-batches:  logits = model(x);  loss = cross_entropy(logits, y) / grad_accum;
                                           loss.backward()   (DDP all-reduces on the last micro-step only)
    clip the global gradient norm;  lr = peak * schedule(step, progress);  optimizer.step()

Around it: evaluation every N steps, metrics, checkpoints, budgets, signals. The model computes logits
only; the loss is taken here. Parallelism (DDP), activation checkpointing and torch.compile are applied
to the model from the outside, so `model/` knows nothing of them.

Context curriculum (`data.short_context`): the run is one or two phases, each with its own loader of
windows at its context; the phase of a step is a function of run progress, and both loaders' positions are
checkpointed, so it changes nothing below.

Exact resume: every source of randomness is either a pure function of the step (the data loader) or
saved in the checkpoint (python, numpy, torch RNGs; samples at evaluations draw from their own seeded
generator), and the schedule is a function of the step when the budget is steps or tokens. A run resumed
from step N therefore repeats, value for value, what the uninterrupted run did after step N (CPU; on GPU
up to non-deterministic kernels). A time budget makes the schedule depend on the clock, so it cannot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from scratchlm.errors import ScratchError
from scratchlm.train import checkpoint as ckpt
from scratchlm.train import distributed
from scratchlm.train.config import (
    PretrainConfig,
    check_budget,
    check_short_context,
    resolve_model_config,
    save_resolved,
)
from scratchlm.train.evaluate import bits_per_byte, predicted_bytes, sample_text, validation_loss
from scratchlm.train.metrics import MetricsLog, Progress, TensorBoard, measure_matmul_flops
from scratchlm.train.schedule import lr_factor
from scratchlm.train.signals import StopSignals

if TYPE_CHECKING:
    from scratchlm.data import TokenLoader


@dataclass
class RunResult:
    run_dir: Path
    step: int
    tokens: int
    elapsed_s: float
    stopped: str  # "budget" | "signal"
    val_loss: float | None = None
    val_bpb: float | None = None
    sample: str = ""
    final_dir: Path | None = None  # RUN/final, the model folder to sample from (None when stopped early)
    checkpoint_dir: Path | None = None


@dataclass
class _Phase:
    """A stretch of the run trained at one context: a rank's loader and how its rows split per micro-step."""

    context: int
    micro_batch: int  # sequences per micro-step on this rank
    loader: TokenLoader  # serves the rank's rows of a whole step (grad_accum micro-batches)
    flops_per_token: float  # training FLOPs per token at this context (MFU)


def pretrain(config: PretrainConfig, out_dir: str | Path, resume: bool = False, say=print) -> RunResult:
    """Train `config` into the run folder `out_dir` (continuing its newest intact checkpoint if `resume`)."""
    from scratchlm.model import pick_device
    from scratchlm.model.device import keep_freed_cpu_memory

    check_budget(config)
    world = distributed.setup(pick_device(config.device))
    if world.device.type == "cpu":
        keep_freed_cpu_memory()  # re-allocated activations stop page-faulting every step
    try:
        return _Run(config, Path(out_dir), world, say if world.is_main else (lambda *_: None)).train(resume)
    finally:
        distributed.teardown(world)


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations during backward instead of storing them (Chen et al. 2016).

    Memory for activations drops from one set per layer to one per block boundary, for one more forward
    per block. Applied by replacing each block's bound `forward` on the instance, so parameter names and
    the model folder format stay exactly as they are.
    """
    for block in model.layers:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


class _Run:
    def __init__(self, cfg: PretrainConfig, run_dir: Path, world: distributed.World, say):
        self.cfg, self.run_dir, self.world, self.say = cfg, run_dir, world, say
        self.device = world.device
        self.precision = "bfloat16" if cfg.precision == "bf16" else "float32"

    # ---- setup ------------------------------------------------------------------------------------

    def _build(self, resume: bool) -> None:
        from scratchlm.data import TokenLoader, load_tokens
        from scratchlm.model import Transformer, autocast_context
        from scratchlm.train.optim import build_optimizer
        from scratchlm.train.prepare import prepare_run_data

        cfg, world = self.cfg, self.world
        if (
            not resume
            and world.is_main
            and (ckpt.list_checkpoints(self.run_dir) or self._metrics_path.exists())
        ):
            raise ScratchError(
                f"{self.run_dir} already holds a run; pass --resume to continue it, or choose another --out"
            )
        self._micro_batch(cfg.data.batch_size, "data.batch_size")  # fail before preparing any data
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for the float32 matmuls that remain
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        shard_dir, self.tokenizer = prepare_run_data(cfg.data, self.run_dir, world, self.say)
        self.model_config = resolve_model_config(cfg.model, self.tokenizer.vocab_size)
        self.context = self.model_config.context_length
        check_short_context(cfg.data, self.context)
        short = cfg.data.short_context
        # (context, sequences per step) of each phase. The long phase keeps the short phase's tokens per
        # step, so the curriculum changes the window length, not the batch in tokens the recipe tuned.
        plan = [(self.context, cfg.data.batch_size)]
        if short:
            if cfg.data.batch_size * short % self.context:
                raise ScratchError(
                    f"data.batch_size {cfg.data.batch_size} x data.short_context {short} / "
                    f"model.context_length {self.context} is not a whole number of sequences; make "
                    f"data.batch_size a multiple of {self.context // short}"
                )
            plan = [(short, cfg.data.batch_size), (self.context, cfg.data.batch_size * short // self.context)]
        what = "the long phase's batch (data.batch_size x data.short_context / model.context_length)"
        micro = [self._micro_batch(rows, what) for _, rows in plan]  # checked before anything is written
        if world.is_main:
            save_resolved(cfg, self.model_config, self.run_dir / "config.yaml")
        self.model = Transformer(self.model_config).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        # A phase's loader serves a rank's whole step (all micro-batches) at once, so the tokens of a step
        # do not depend on grad_accum or world_size: the three settings train on the same data. Phase i
        # draws the stream of seed + i, so with the curriculum off the one loader is the one runs had.
        self.phases = []
        for index, ((context, _), b) in enumerate(zip(plan, micro)):
            loader = TokenLoader(
                shard_dir, "train", b * cfg.data.grad_accum, context, seed=cfg.seed + index,
                rank=world.rank, world_size=world.size, mode=cfg.data.mode, device=self.device,
                expect_fingerprint=self.tokenizer.fingerprint(),
            )  # fmt: skip
            flops = self.model.flops_per_token(training=True, context_length=context)
            self.phases.append(_Phase(context, b, loader, flops))
        self.phase = self.phases[0]
        self.val_tokens = load_tokens(shard_dir, "val")
        self.autocast = functools.partial(autocast_context, self.device, self.precision)
        self.tokens_per_step = plan[0][0] * plan[0][1]  # the same in every phase
        self.step, self.tokens, self.elapsed_before, self.best_val = 0, 0, 0.0, None
        if resume:
            self._restore()
        self.train_model = self._wrap(self.model)

    def _micro_batch(self, rows: int, what: str) -> int:
        """Sequences per micro-step on one rank for a step of `rows` sequences (`what` names them)."""
        world, accum = self.world, self.cfg.data.grad_accum
        per_rank = rows // (world.size * accum)
        if per_rank == 0 or per_rank * world.size * accum != rows:
            raise ScratchError(
                f"{what} {rows} is not divisible by world_size {world.size} x grad_accum {accum}; "
                "change one of them"
            )
        return per_rank

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Activation checkpointing, then DDP, then compile: all from outside the model."""
        if self.cfg.activation_checkpointing:
            enable_activation_checkpointing(model)
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = self.ddp = DistributedDataParallel(model, device_ids=ids)
        return torch.compile(model) if self.cfg.compile else model

    def _restore(self) -> None:
        from scratchlm.model.folder import load_model

        path = ckpt.find_resumable(self.run_dir, self.say) if self.world.is_main else None
        path = distributed.broadcast_object(str(path) if path else None, self.world)
        if path is None:
            self.say(f"resume: no checkpoint in {self.run_dir}; starting from step 0")
            return
        loaded, _, _ = load_model(path, device=self.device)
        self.model.load_state_dict(loaded.state_dict())
        state = ckpt.load_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_loader_states(state["loader"])
        ckpt.set_rng_states(state["rng"])
        self.step, self.tokens = state["step"], state["tokens"]
        self.elapsed_before, self.best_val = state["elapsed_s"], state["best_val_loss"]
        self.say(f"resume: continuing from {Path(path).name} (step {self.step})")

    def _load_loader_states(self, saved: dict) -> None:
        # Checkpoints from before the curriculum hold one loader's state: a run at one context.
        states = saved["phases"] if "phases" in saved else [saved]
        if len(states) != len(self.phases):
            raise ScratchError(
                f"cannot resume the loader: the checkpoint has {len(states)} data phase(s) but this config "
                f"has {len(self.phases)}; resume with the same data.short_context"
            )
        for phase, state in zip(self.phases, states):
            phase.loader.load_state_dict(state)

    @property
    def _metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    # ---- the loop ---------------------------------------------------------------------------------

    def train(self, resume: bool) -> RunResult:
        cfg, world = self.cfg, self.world
        self._build(resume)
        if self.step and self._progress(self.elapsed_before) >= 1.0 and (self.run_dir / "final").is_dir():
            self.say(
                f"{self.run_dir} already finished its budget at step {self.step}; raise the budget to go on"
            )
            return RunResult(self.run_dir, self.step, self.tokens, self.elapsed_before, "budget",
                             final_dir=self.run_dir / "final")  # fmt: skip
        self.metrics = MetricsLog(self._metrics_path) if world.is_main else None
        if self.metrics:
            self.metrics.truncate_after(self.step)
        self.tensorboard = TensorBoard(
            self.run_dir / "tensorboard", cfg.logging.tensorboard and world.is_main
        )
        dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float32
        self.peak_flops = measure_matmul_flops(self.device, dtype, seconds=0.2) * world.size
        self.progress_bar = Progress(cfg.logging.progress and world.is_main, self._progress(0.0), self.say)
        self.start = time.perf_counter()
        # Model FLOPs done by this process, summed per step at its phase's context: MFU over a logging
        # window that spans the phase switch stays exact.
        self.flops = 0.0
        self.last_log = (self.start, self.tokens, self.flops)
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        loss = torch.zeros((), device=self.device)
        last_eval = last_save = None
        stopped = "budget"
        try:
            with StopSignals() as signals:
                while True:
                    elapsed, interrupted = self._sync_clock(signals.received is not None)
                    if interrupted:
                        stopped = "signal"
                        break
                    if self._progress(elapsed) >= 1.0:
                        break
                    loss = self._train_step(self._progress(elapsed))
                    nonfinite |= ~torch.isfinite(loss)
                    self.step += 1
                    self.tokens += self.tokens_per_step
                    self.flops += self.tokens_per_step * self.phase.flops_per_token
                    log_now = self.step % cfg.logging.every == 0
                    eval_now = cfg.eval.every > 0 and self.step % cfg.eval.every == 0
                    save_now = cfg.checkpoint.every > 0 and self.step % cfg.checkpoint.every == 0
                    if log_now or eval_now or save_now or self.device.type == "cpu":
                        self._check_finite(nonfinite, loss, last_save)
                    if log_now:
                        self._log_train(loss)
                    if eval_now:
                        last_eval = self._evaluate()
                    if save_now:
                        last_save = self._save(last_eval)
                    if eval_now or save_now:  # tokens/s measures training, not evaluating or saving
                        self.last_log = (time.perf_counter(), self.tokens, self.flops)
            self._check_finite(nonfinite, loss, last_save)
            if stopped == "budget":
                self.progress_bar.complete()
            if stopped == "budget" and (last_eval is None or last_eval["step"] != self.step):
                last_eval = self._evaluate()
            if last_save is None or last_save[0] != self.step:
                last_save = self._save(last_eval)
            final = self._write_final() if stopped == "budget" else None
        finally:
            self.progress_bar.close()
            self.tensorboard.close()
            if self.metrics:
                self.metrics.close()
        if stopped == "signal":
            self.say(
                f"stopped by {signals.received} at step {self.step}; saved {last_save[1]}; --resume continues"
            )
        return RunResult(
            run_dir=self.run_dir, step=self.step, tokens=self.tokens, elapsed_s=self._elapsed(),
            stopped=stopped, final_dir=final, checkpoint_dir=last_save[1],
            val_loss=last_eval["val_loss"] if last_eval else None,
            val_bpb=last_eval["val_bpb"] if last_eval else None,
            sample=last_eval["sample"] if last_eval else "",
        )  # fmt: skip

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def _sync_clock(self, interrupted: bool) -> tuple[float, bool]:
        """(elapsed seconds, stop requested), the same on every rank, so all ranks stop at the same step."""
        elapsed = self._elapsed()
        if not self.world.distributed:
            return elapsed, interrupted
        t = torch.tensor([elapsed, float(interrupted)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t[0]), bool(t[1] > 0)

    def _progress(self, elapsed: float) -> float:
        """Fraction of the budget used: the furthest along of the step, token and time budgets."""
        b = self.cfg.budget
        fractions = [0.0]
        if b.max_steps:
            fractions.append(self.step / b.max_steps)
        if b.max_tokens:
            fractions.append(self.tokens / b.max_tokens)
        if b.max_time:
            fractions.append(elapsed / b.seconds())
        return max(fractions)

    def _train_step(self, progress: float) -> torch.Tensor:
        """One optimizer step; returns the step's mean loss (detached, averaged over ranks when logged)."""
        factor = lr_factor(self.cfg.schedule, self.step, progress)
        momentum = self.cfg.optim.muon_momentum_at(self.step)  # a function of the step: resume stays exact
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
            if group.get("kind") == "muon":
                group["momentum"] = momentum
        self.lr_factor = factor
        # The phase follows progress, which only grows in a run, so a step or token budget switches at
        # the same step every time (the resume tests rely on it). Off: until is 0 and the one phase runs.
        phase = self.phases[0] if progress < self.cfg.data.short_context_until else self.phases[-1]
        self.phase = phase
        accum, b = self.cfg.data.grad_accum, phase.micro_batch
        total = torch.zeros((), device=self.device)
        step_inputs, step_targets = phase.loader.next_batch()  # (accum * b, T) each
        for micro in range(accum):
            rows = slice(micro * b, (micro + 1) * b)
            inputs, targets = step_inputs[rows], step_targets[rows]  # (b, T) each
            last = micro == accum - 1
            sync = contextlib.nullcontext() if last or not self.world.distributed else self.ddp.no_sync()
            with sync:
                with self.autocast():
                    logits = self.train_model(inputs)  # (b, T, V)
                loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()) / accum
                loss.backward()
            total += loss.detach()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def _check_finite(self, nonfinite: torch.Tensor, loss: torch.Tensor, last_save) -> None:
        """Stop on a NaN/inf loss, before anything could be saved from the diverged weights."""
        if not distributed.any_rank(bool(nonfinite), self.world):
            return
        kept = f"the last good checkpoint is {last_save[1]}" if last_save else "no checkpoint was saved"
        raise ScratchError(
            f"training diverged: the loss became {float(loss)} by step {self.step}; stopped without saving "
            f"({kept}); lower optim.lr / optim.muon_lr or raise schedule.warmup_steps, then --resume"
        )

    def _log_train(self, loss: torch.Tensor) -> None:
        (mean_loss,) = distributed.all_reduce_sum([float(loss)], self.world)
        mean_loss /= self.world.size
        now = time.perf_counter()
        then, tokens_then, flops_then = self.last_log
        seconds = max(1e-9, now - then)
        tokens_per_s = (self.tokens - tokens_then) / seconds
        mfu = (self.flops - flops_then) / seconds / self.peak_flops
        self.last_log = (now, self.tokens, self.flops)
        elapsed = self._elapsed()
        record = {
            "kind": "train", "step": self.step, "tokens": self.tokens, "elapsed_s": round(elapsed, 3),
            "loss": mean_loss, "lr": self.lr_factor * self.cfg.optim.lr, "lr_factor": self.lr_factor,
            "tokens_per_s": round(tokens_per_s, 1), "mfu": round(mfu, 4), "context": self.phase.context,
        }  # fmt: skip
        self._record(record)
        self.progress_bar.update(
            self._progress(elapsed),
            elapsed,
            step=self.step,
            loss=mean_loss,
            **{"tok/s": tokens_per_s},
            mfu=mfu,
        )

    def _record(self, record: dict) -> None:
        if self.metrics:
            self.metrics.write(record)
            self.tensorboard.scalars(record["step"], record)

    def _evaluate(self) -> dict:
        cfg = self.cfg
        started = time.perf_counter()
        # The model's context in every phase, in batches of the last phase's micro-batch (whose windows
        # are that long), so evaluation needs no more memory than a training step at the model's context.
        val_loss, n_pred = validation_loss(
            self.model, self.val_tokens, self.context, batch_size=self.phases[-1].micro_batch,
            max_tokens=cfg.eval.max_tokens, device=self.device, autocast=self.autocast, world=self.world,
        )  # fmt: skip
        if not hasattr(self, "_val_bytes"):
            self._val_bytes = predicted_bytes(self.val_tokens, n_pred, self.tokenizer)
        record = {
            "kind": "eval", "step": self.step, "tokens": self.tokens, "elapsed_s": round(self._elapsed(), 3),
            "val_loss": val_loss, "val_bpb": bits_per_byte(val_loss, n_pred, self._val_bytes), "sample": "",
        }  # fmt: skip
        if self.world.is_main and cfg.eval.sample_tokens > 0:
            record["sample"] = sample_text(
                self.model, self.tokenizer, cfg.eval.sample_prompt, cfg.eval.sample_tokens,
                cfg.eval.temperature, seed=cfg.seed + self.step,
            )  # fmt: skip
        self._record(record)
        self.progress_bar.write(
            f"step {self.step}: val loss {val_loss:.4f}, {record['val_bpb']:.4f} bits/byte "
            f"({time.perf_counter() - started:.1f}s)"
        )
        if self.best_val is None or val_loss < self.best_val:
            self.best_val = val_loss
        return record

    def _save(self, last_eval: dict | None) -> tuple[int, Path]:
        """Checkpoint the current step (rank 0 writes; the others wait for it)."""
        from scratchlm.model.folder import write_model_files

        path = ckpt.checkpoints_dir(self.run_dir) / f"step_{self.step}"
        if self.world.is_main:
            val = last_eval["val_loss"] if last_eval and last_eval["step"] == self.step else None
            state = {
                "step": self.step, "tokens": self.tokens, "elapsed_s": self._elapsed(),
                "best_val_loss": self.best_val, "optimizer": self.optimizer.state_dict(),
                "loader": {"phases": [p.loader.state_dict() for p in self.phases]},
                "rng": ckpt.rng_states(), "world_size": self.world.size,
                "config": dataclasses.asdict(self.cfg),
            }  # fmt: skip
            extra = {"step": self.step, "tokens": self.tokens, "val_loss": val}
            path = ckpt.save_checkpoint(
                self.run_dir,
                self.step,
                lambda d: write_model_files(d, self.model, self.tokenizer, extra=extra),
                state,
                val,
            )
            ckpt.prune(self.run_dir, self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_best)
        distributed.barrier(self.world)
        return self.step, path

    def _write_final(self) -> Path | None:
        from scratchlm.model.folder import save_model

        final = self.run_dir / "final"
        if self.world.is_main:
            save_model(final, self.model, self.tokenizer, extra={"step": self.step, "tokens": self.tokens})
        distributed.barrier(self.world)
        return final
