"""What a run reports while it trains: records to metrics.jsonl (through `RunDir`, its owner), a progress
bar for the person, TensorBoard scalars (optional), and the throughput and MFU of each logging window.

MFU (model FLOPs utilization) divides by the device's specified peak (`peak_flops`), not by a rate timed
at the start of the run, which depends on what else shared the machine then. `measure_matmul_flops`
remains for benchmarks that report the rate this machine reaches.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from scratchlm.train.config import LoggingConfig
from scratchlm.train.distributed import World, all_reduce_sum
from scratchlm.train.run_dir import RunDir


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 0, seconds: float = 0.3):
    """FLOP/s of a square matmul on `device` in `dtype` (the denominator of MFU).

    1024 on a CPU (big enough to reach its rate), 4096 on a GPU (a 1024 matmul is over before the
    launch overhead is paid, which would understate the rate).
    """
    size = size or (4096 if device.type == "cuda" else 1024)
    gen = torch.Generator().manual_seed(0)  # its own generator: the run's RNG streams stay untouched
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b  # warm up (kernel choice, thread pool)
    sync()
    n, start = 0, time.perf_counter()
    while True:
        a @ b
        n += 1
        if n % 4 == 0:
            sync()
            if time.perf_counter() - start >= seconds:
                break
    return 2 * size**3 * n / (time.perf_counter() - start)


class Progress:
    """tqdm bar over run progress (0..100 %), with loss, tokens/s, MFU and ETA; silent when disabled."""

    def __init__(self, enabled: bool, initial: float = 0.0, say=print):
        self.bar, self.say = None, say
        if enabled:
            self.bar = tqdm(total=100.0, initial=100.0 * initial, bar_format="{l_bar}{bar}|{postfix}")

    def update(self, progress: float, elapsed: float, **fields) -> None:
        if self.bar is None:
            return
        eta = elapsed * (1 - progress) / progress if progress > 0 else math.nan
        self.bar.n = round(100.0 * min(progress, 1.0), 2)
        self.bar.set_postfix_str(
            "  ".join(_fmt(k, v) for k, v in fields.items()) + f"  eta {_fmt_time(eta)}", refresh=True
        )

    def complete(self) -> None:
        """Show 100% when the budget is used up (the last refresh may predate the last steps)."""
        if self.bar is not None:
            self.bar.n = 100.0
            self.bar.refresh()

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            self.say(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(key: str, value) -> str:
    if key == "mfu":
        return f"mfu {100 * value:.1f}%"
    if key == "tok/s":
        return f"{value:,.0f} tok/s"
    return f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TensorBoard:
    """Scalars to TensorBoard when the `tensorboard` package is installed; otherwise nothing."""

    def __init__(self, log_dir: Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the optional extra is not installed: metrics.jsonl still has everything
                return
            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, step: int, record: dict) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key not in ("step", "kind") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{record['kind']}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class RunLog:
    """The records, TensorBoard scalars and progress bar of one training process (rank 0 writes)."""

    def __init__(self, run: RunDir, world: World, cfg: LoggingConfig, *, peak: float, after_step: int,
                 progress: float, say=print):  # fmt: skip
        self.world = world
        self.metrics = run.open_metrics(after_step) if world.is_main else None
        self.tensorboard = TensorBoard(run.tensorboard, cfg.tensorboard and world.is_main)
        self.progress = Progress(cfg.progress and world.is_main, progress, say)
        self.peak = peak * world.size  # FLOP/s of all ranks together
        self.tokens = 0  # tokens and model FLOPs done by this process, step by step: MFU over a window
        self.flops = 0.0  # that spans a change of the step's shape (a context curriculum) stays exact
        self.restart_window()

    def add_work(self, tokens: int, flops: float) -> None:
        self.tokens += tokens
        self.flops += flops

    def restart_window(self) -> None:
        """Evaluating or saving is not training: throughput is measured from here on."""
        self.window = (time.perf_counter(), self.tokens, self.flops)

    def train(self, record: dict, loss: torch.Tensor, progress: float) -> None:
        """Complete a train `record` (step, tokens, elapsed_s, lr...) with the loss averaged over ranks,
        tokens/s and MFU over the window since the last one, then write and show it."""
        (mean_loss,) = all_reduce_sum([float(loss)], self.world)
        now = time.perf_counter()
        then, tokens_then, flops_then = self.window
        seconds = max(1e-9, now - then)
        tokens_per_s = (self.tokens - tokens_then) / seconds
        mfu = (self.flops - flops_then) / seconds / self.peak
        self.window = (now, self.tokens, self.flops)
        step, elapsed, extra = record.pop("step"), record.pop("elapsed_s"), record.pop("info")
        record = {"kind": "train", "step": step, "tokens": record.pop("tokens"),
                  "elapsed_s": round(elapsed, 3), "loss": mean_loss, **record,
                  "tokens_per_s": round(tokens_per_s, 1), "mfu": round(mfu, 4), **extra}  # fmt: skip
        self.record(record)
        self.progress.update(progress, elapsed, step=step, loss=mean_loss, **{"tok/s": tokens_per_s}, mfu=mfu)

    def record(self, record: dict) -> None:
        if self.metrics:
            self.metrics.write(record)
            self.tensorboard.scalars(record["step"], record)

    def close(self) -> None:
        self.progress.close()
        self.tensorboard.close()
        if self.metrics:
            self.metrics.close()
