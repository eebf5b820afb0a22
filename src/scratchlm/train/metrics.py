"""What a run reports: metrics.jsonl (the record), a progress bar (for the person), TensorBoard (optional).

metrics.jsonl follows docs/architecture.md: one JSON object a line, `kind` "train" or "eval". It is
appended line by line and flushed, so a killed run keeps everything up to its last step. On resume, lines
past the checkpoint's step are dropped first: the resumed run writes them again, and the file then reads
exactly like an uninterrupted run's.

MFU (model FLOPs utilization) is measured against the matrix-multiply rate of *this* machine, timed at
the start of the run, not a datasheet peak: on a laptop CPU there is no honest datasheet figure, and a
ratio against a measured rate says how much of the step is not matmul.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from scratchlm.fileio import write_text_atomic


class MetricsLog:
    """Append-only JSON Lines file; `truncate_after(step)` prepares it for a resumed run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = None

    def truncate_after(self, step: int) -> None:
        """Drop records with a step beyond `step` (written after the checkpoint a run resumes from)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("step", 0) <= step:
                keep.append(line)
        write_text_atomic(self.path, "".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict]:
    """All records of a metrics.jsonl (optionally of one kind)."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if kind is None or record.get("kind") == kind:
                out.append(record)
    return out


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
            from tqdm import tqdm

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
