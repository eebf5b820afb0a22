"""The training loop every stage shares: `Trainer(config, run, world).fit(objective, resume)`.

One optimizer step:
    micro-batches = objective.batches(step, progress)
    n = sum of objective.count(b) over the micro-batches and all ranks        (one all-reduce)
    for each micro-batch b:  loss_sum, _ = objective.loss(models, b)
                             backward(loss_sum / n * world_size)   (DDP averages over ranks: sum / n)
    clip each model's gradient norm;  lr = peak * schedule(step, progress);  step every optimizer

Everything that does not depend on the stage lives here: the budget and progress, accumulation, clipping,
the schedule, signals, the divergence guard, metrics, the evaluation and checkpoint cadence, the wrappers
(activation checkpointing, DDP or FSDP (scratchlm.train.parallel) or DeepSpeed (.zero), compile, applied
from outside the models). What is trained and how its
loss is taken is the objective's (scratchlm.train.objective).

Exact resume: every source of randomness is a pure function of the step (the objective's batches) or is
saved in the checkpoint (python, numpy, torch RNGs), and the schedule is a function of the step when the
budget is steps or tokens. A run resumed from step N therefore repeats, value for value, what the
uninterrupted run did after step N (CPU; on GPU up to non-deterministic kernels). A time budget makes the
schedule depend on the clock, so it cannot.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_dir
from scratchlm.model.device import autocast_context, pick_device
from scratchlm.train import checkpoint as ckpt
from scratchlm.train import distributed, parallel, step_state
from scratchlm.train.allocator import keep_freed_cpu_memory
from scratchlm.train.config import TrainerConfig
from scratchlm.train.metrics import RunLog
from scratchlm.train.objective import Objective
from scratchlm.train.optim import build_optimizer
from scratchlm.train.peak_flops import peak_flops
from scratchlm.train.run_dir import RunDir
from scratchlm.train.schedule import lr_factor
from scratchlm.train.signals import StopSignals


@dataclass
class RunResult:
    run_dir: Path
    step: int
    tokens: int
    elapsed_s: float
    stopped: str  # "budget" | "signal"
    evaluation: dict = field(default_factory=dict)  # the last evaluation's record
    final_dir: Path | None = None  # RUN/final, the model folder to use (None when stopped early)
    checkpoint_dir: Path | None = None

    @property
    def val_loss(self) -> float | None:
        return self.evaluation.get("val_loss")

    @property
    def val_bpb(self) -> float | None:
        return self.evaluation.get("val_bpb")

    @property
    def sample(self) -> str:
        return self.evaluation.get("sample", "")


def run_stage(config, out_dir, resume: bool, say, build) -> RunResult:
    """What every stage's entry point does (pretrain, sft, train_reward, ppo, dpo, grpo): set up the
    process group on `config.device`, a Trainer over the run folder `out_dir` (which checks the folder and
    seeds every RNG), then the objective `build(world, run, say)` after it, fit, and tear down."""
    sharded = config.parallel in ("fsdp", "deepspeed")  # they need a process group even for one rank
    world = distributed.setup(pick_device(config.device), join_alone=sharded)
    try:
        run = RunDir(out_dir)
        trainer = Trainer(config.trainer(), run, world, resume, say)
        return trainer.fit(build(world, run, trainer.say))
    finally:
        distributed.teardown(world)


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations during backward instead of storing them (Chen et al. 2016).

    Applied by replacing each block's bound `forward` on the instance, so parameter names and the model
    folder format stay exactly as they are.
    """
    for block in model.layers:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


@dataclass
class _Counters:
    """Where the run stands: all of it is saved in a checkpoint."""

    step: int = 0
    tokens: int = 0
    elapsed_before: float = 0.0  # seconds trained before this process started (resumed runs)
    best_val: float | None = None
    val_history: list = field(default_factory=list)  # recent validation losses (divergence guard)


class Trainer:
    def __init__(self, config: TrainerConfig, run: RunDir, world: distributed.World, resume: bool, say=print):
        """Checks the run folder and seeds every RNG: build the objective's models after this."""
        self.cfg, self.run, self.world, self.resume = config, run, world, resume
        self.say = say if world.is_main else (lambda *_: None)
        self.parallel = parallel.resolve(config.parallel, world)  # none | ddp | fsdp | deepspeed
        # scratchlm.train.zero, imported only for DeepSpeed runs: an optional extra, seconds to import.
        self.zero = importlib.import_module("scratchlm.train.zero") if self.parallel == "deepspeed" else None
        if not resume and world.is_main and run.holds_run():
            raise ScratchError(
                f"{run.path} already holds a run; pass --resume to continue it, or choose another --out"
            )
        self.device = world.device
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for the float32 matmuls that remain
        if self.device.type == "cpu":
            keep_freed_cpu_memory()  # re-allocated activations stop page-faulting every step
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        self.autocast = functools.partial(autocast_context, self.device, self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cfg.precision == "bf16" else torch.float32

    # ---- the loop ---------------------------------------------------------------------------------

    def fit(self, objective: Objective) -> RunResult:
        cfg, world, run = self.cfg, self.world, self.run
        if world.is_main:
            run.write_config(objective.resolved_config())
        # Wrapped before the optimizers are built: FSDP replaces the parameters by their shards.
        wrapped = {name: self._wrap(objective.models[name]) for name in objective.trainable}
        models = {**objective.models, **wrapped}
        optimizers = {
            name: build_optimizer(objective.models[name], cfg.optim) for name in objective.trainable
        }
        if self.zero is not None:  # DeepSpeed takes over the optimizer and the backward
            if len(objective.trainable) != 1:  # its engine drives one model's backward
                raise ScratchError(
                    f"parallel: deepspeed trains one model; {objective.name} trains "
                    f"{', '.join(objective.trainable)}: use parallel=fsdp"
                )
            name = objective.trainable[0]
            models[name], optimizers[name] = self.zero.initialize(
                objective.models[name], optimizers[name], cfg.zero_stage, cfg.grad_clip
            )
        counters = self._restore(objective, models, optimizers) if self.resume else _Counters()
        if counters.step and self._progress(counters, counters.elapsed_before) >= 1.0 and run.final.is_dir():
            self.say(
                f"{run.path} already finished its budget at step {counters.step}; raise the budget to go on"
            )
            return RunResult(run.path, counters.step, counters.tokens, counters.elapsed_before, "budget",
                             final_dir=run.final)  # fmt: skip
        peak, how = peak_flops(self.device, self.dtype)
        if cfg.logging.progress:
            self.say(f"MFU against {how}" + (f" (x {world.size} ranks)" if world.distributed else ""))
        log = RunLog(run, world, cfg.logging, peak=peak, after_step=counters.step,
                     progress=self._progress(counters, counters.elapsed_before), say=self.say)  # fmt: skip
        start = time.perf_counter()
        elapsed = lambda: counters.elapsed_before + time.perf_counter() - start  # noqa: E731
        bad = torch.zeros((), dtype=torch.bool, device=self.device)  # a non-finite or far too large loss
        loss = torch.zeros((), device=self.device)
        last_eval, last_save, stopped = None, None, "budget"
        ceiling = objective.loss_ceiling if objective.loss_ceiling is not None else math.inf
        try:
            with StopSignals() as signals:
                while True:
                    now, interrupted = self._sync_clock(elapsed(), signals.received is not None)
                    if interrupted:
                        stopped = "signal"
                        break
                    progress = self._progress(counters, now)
                    if progress >= 1.0:
                        break
                    factor = self._set_learning_rates(optimizers, counters.step, progress)
                    loss, work = self._train_step(objective, models, optimizers, counters.step, progress)
                    bad |= ~torch.isfinite(loss) | (loss > ceiling)
                    counters.step += 1
                    counters.tokens += work.tokens
                    log.add_work(work.tokens, work.flops)
                    step = counters.step
                    log_now = step % cfg.logging.every == 0
                    eval_now = cfg.eval_every > 0 and step % cfg.eval_every == 0
                    save_now = cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0
                    if log_now or eval_now or save_now or self.device.type == "cpu":
                        self._check_loss(bad, loss, ceiling, counters, last_save)
                    if log_now:
                        now = elapsed()
                        lr = factor * cfg.optim.lr
                        record = {"step": step, "tokens": counters.tokens, "elapsed_s": now, "lr": lr,
                                  "lr_factor": factor, "info": work.info}  # fmt: skip
                        log.train(record, loss, self._progress(counters, now))
                    if eval_now:
                        last_eval = self._evaluate(objective, counters, log, elapsed(), last_save)
                    if save_now:
                        last_save = self._save(objective, models, optimizers, counters, last_eval, elapsed())
                    if eval_now or save_now:  # tokens/s measures training, not evaluating or saving
                        log.restart_window()
            self._check_loss(bad, loss, ceiling, counters, last_save)
            if stopped == "budget":
                log.progress.complete()
                if last_eval is None or last_eval["step"] != counters.step:
                    last_eval = self._evaluate(objective, counters, log, elapsed(), last_save)
            if last_save is None or last_save[0] != counters.step:
                last_save = self._save(objective, models, optimizers, counters, last_eval, elapsed())
            final = self._write_final(objective, counters) if stopped == "budget" else None
        finally:
            log.close()
        if stopped == "signal":
            self.say(
                f"stopped by {signals.received} at step {counters.step}; saved {last_save[1]}; "
                "--resume continues"
            )
        return RunResult(run_dir=run.path, step=counters.step, tokens=counters.tokens, elapsed_s=elapsed(),
                         stopped=stopped, evaluation=last_eval or {}, final_dir=final,
                         checkpoint_dir=last_save[1])  # fmt: skip

    def _progress(self, counters: _Counters, elapsed: float) -> float:
        """Fraction of the budget used: the furthest along of the step, token and time budgets."""
        b = self.cfg.budget
        fractions = [0.0]
        if b.max_steps:
            fractions.append(counters.step / b.max_steps)
        if b.max_tokens:
            fractions.append(counters.tokens / b.max_tokens)
        if b.max_time:
            fractions.append(elapsed / b.seconds())
        return max(fractions)

    def _sync_clock(self, elapsed: float, interrupted: bool) -> tuple[float, bool]:
        """(elapsed seconds, stop requested), the same on every rank, so all ranks stop at the same step."""
        if not self.world.distributed:
            return elapsed, interrupted
        t = torch.tensor([elapsed, float(interrupted)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t[0]), bool(t[1] > 0)

    def _set_learning_rates(self, optimizers: dict, step: int, progress: float) -> float:
        factor = lr_factor(self.cfg.schedule, step, progress)
        momentum = self.cfg.optim.muon_momentum_at(step)  # a function of the step: resume stays exact
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
                if group.get("kind") == "muon":
                    group["momentum"] = momentum
        return factor

    def _train_step(self, objective, models, optimizers, step: int, progress: float):
        """One optimizer step; returns (the step's mean loss on this rank's share, detached; the work)."""
        work = objective.batches(step, progress)
        (n_valid,) = distributed.all_reduce_sum(
            [float(sum(objective.count(b) for b in work.micro))], self.world
        )
        # A step with nothing to predict trains nothing: its loss and gradients are 0, never 0/0.
        n_valid = max(n_valid, 1.0)
        total = torch.zeros((), device=self.device)
        for index, batch in enumerate(work.micro):
            last = index == len(work.micro) - 1
            with self._no_sync(models, objective.trainable, skip=last), self.autocast():
                loss_sum, _ = objective.loss(models, batch)
                loss = loss_sum / n_valid
                # x world size: DDP, FSDP and ZeRO average gradients over ranks; we want their sum / n
                if self.zero is not None:
                    self.zero.backward(models[objective.trainable[0]], loss * self.world.size, last)
                else:
                    (loss * self.world.size).backward()
            total += loss.detach()
        if self.zero is not None:
            self.zero.step(models[objective.trainable[0]])  # clips, steps and zeroes, as below
            return total, work
        for name, optimizer in optimizers.items():
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(objective.models[name].parameters(), self.cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return total, work

    def _no_sync(self, models: dict, trainable, skip: bool):
        """No gradient sync on every trainable model but on the last micro-batch (they sync once a step)."""
        stack = contextlib.ExitStack()
        if not skip and self.world.distributed:
            for name in trainable:
                stack.enter_context(parallel.no_sync(getattr(models[name], "_orig_mod", models[name])))
        return stack

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Activation checkpointing, then DDP or FSDP, then compile: all from outside the model."""
        if self.cfg.activation_checkpointing:
            enable_activation_checkpointing(model)
        model = parallel.parallelize(model, self.world, self.parallel, bf16=self.dtype == torch.bfloat16,
                                     cpu_offload=self.cfg.fsdp_cpu_offload)  # fmt: skip
        return torch.compile(model) if self.cfg.compile else model

    # ---- guards and evaluation --------------------------------------------------------------------

    def _check_loss(self, bad, loss, ceiling: float, counters: _Counters, last_save) -> None:
        """Stop on a NaN/inf loss, or one above the objective's ceiling, before anything could be saved."""
        if not distributed.any_rank(bool(bad), self.world):
            return
        value = float(loss)
        why = (
            f"the loss became {value}"
            if not math.isfinite(value) or value <= ceiling
            else (f"the loss reached {value:.4g}, far above {ceiling:.4g} (where no working run goes)")
        )
        self._diverged(f"{why} by step {counters.step}", last_save)

    def _diverged(self, why: str, last_save, keep_best: bool = False) -> None:
        kept = f"the last good checkpoint is {last_save[1]}" if last_save else "no checkpoint was saved"
        if keep_best and (best := self.run.pointers().get("best")):
            kept = f"the best checkpoint is {best}"
        raise ScratchError(
            f"training diverged: {why}; stopped without saving ({kept}); lower optim.lr / optim.muon_lr "
            "or raise schedule.warmup_steps, then --resume"
        )

    def _evaluate(self, objective, counters: _Counters, log: RunLog, elapsed: float, last_save) -> dict:
        started = time.perf_counter()
        figures = objective.evaluate(counters.step)
        record = {"kind": "eval", "step": counters.step, "tokens": counters.tokens,
                  "elapsed_s": round(elapsed, 3), **figures}  # fmt: skip
        log.record(record)
        shown = ", ".join(
            f"{k.replace('_', ' ')} {v:.4f}" for k, v in figures.items() if isinstance(v, float)
        )
        log.progress.write(f"step {counters.step}: {shown} ({time.perf_counter() - started:.1f}s)")
        val = figures.get("val_loss")
        if val is None:
            return record
        ceiling = objective.loss_ceiling
        if not math.isfinite(val) or (ceiling is not None and val > ceiling):
            self._diverged(f"the validation loss is {val:.4g} at step {counters.step}", last_save)
        history = (counters.val_history + [val])[-(self.cfg.max_rises + 1) :]
        counters.val_history = history
        if (
            self.cfg.max_rises
            and len(history) > self.cfg.max_rises
            and all(a < b for a, b in zip(history, history[1:]))
        ):
            rises = " -> ".join(f"{v:.4f}" for v in history)
            self._diverged(
                f"the validation loss rose at {self.cfg.max_rises} evaluations in a row ({rises})",
                last_save,
                keep_best=True,
            )
        if counters.best_val is None or val < counters.best_val:
            counters.best_val = val
        return record

    # ---- checkpoints ------------------------------------------------------------------------------

    def _save(
        self, objective, models, optimizers, counters: _Counters, last_eval, elapsed: float
    ) -> tuple[int, Path]:
        """Checkpoint the current step: rank 0 writes (the others wait for it); under FSDP or DeepSpeed
        every rank writes its part of the optimizer state (and under FSDP of the models)."""
        step = counters.step
        path = self.run.checkpoint_path(step)
        val = last_eval.get("val_loss") if last_eval and last_eval["step"] == step else None
        state = {
            "objective": objective.name, "step": step, "tokens": counters.tokens, "elapsed_s": elapsed,
            "best_val_loss": counters.best_val, "val_history": list(counters.val_history),
            "world_size": self.world.size, "objective_state": objective.state_dict(),
            "rng": ckpt.rng_states(),
        }  # fmt: skip
        meta = {"step": step, "objective": objective.name, "val_loss": val}
        extra = {"step": step, "tokens": counters.tokens, "val_loss": val}  # into each model's manifest
        step_state.save(path, self.world, self.parallel, self.zero, objective, models, optimizers, state,
                        meta, extra)  # fmt: skip
        if self.world.is_main:
            keep = self.cfg.checkpoint
            self.run.prune(keep.keep_last, keep.keep_best, ckpt.is_complete)
        distributed.barrier(self.world)
        return step, path

    def _restore(self, objective, models, optimizers) -> _Counters:
        path = ckpt.find_resumable(self.run, self.say) if self.world.is_main else None
        path = distributed.broadcast_object(str(path) if path else None, self.world)
        if path is None:
            self.say(f"resume: no checkpoint in {self.run.path}; starting from step 0")
            return _Counters()
        path = Path(path)
        state = ckpt.load_state(path)
        if state.get("objective") != objective.name:
            raise ScratchError(
                f"{path} was trained by objective {state.get('objective')!r}, this run is "
                f"{objective.name!r}; resume with the recipe that made the run, or choose another --out"
            )
        step_state.restore(path, self.world, self.parallel, self.zero, objective, models, optimizers, state)
        objective.load_state_dict(state["objective_state"])
        ckpt.set_rng_states(state["rng"])
        self.say(f"resume: continuing from {path.name} (step {state['step']})")
        return _Counters(state["step"], state["tokens"], state["elapsed_s"], state["best_val_loss"],
                         list(state["val_history"]))  # fmt: skip

    def _write_final(self, objective, counters: _Counters) -> Path:
        name = objective.trainable[0]
        gathered = self.zero.gathered if self.zero is not None else parallel.gathered
        with gathered(objective.models[name]):  # FSDP, ZeRO-3: whole weights for rank 0 (a collective)
            if self.world.is_main:
                with atomic_dir(self.run.final) as tmp:
                    extra = {"step": counters.step, "tokens": counters.tokens}
                    objective.write_model(name, tmp, extra)
        distributed.barrier(self.world)
        return self.run.final
