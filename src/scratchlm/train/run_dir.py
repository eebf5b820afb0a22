"""`RunDir`: the one owner of a run folder's layout. Everything that reads or writes a run goes through it.

    RUN/config.yaml            the resolved configuration the run trained with
    RUN/metrics.jsonl          one JSON object a line: kind "train", "eval" or "benchmark"
    RUN/checkpoints/step_N/    checkpoints (scratchlm.train.checkpoint owns what is inside one)
    RUN/latest.json            pointers: {"last": "checkpoints/step_N", "best": ..., "best_val_loss": ...}
    RUN/final/                 the model folder at the end of the budget

`resolve_model_dir` turns what a user types after `--ckpt` (a model folder or a run folder) into the model
folder to load, so no command knows this layout but this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import yaml

from scratchlm.errors import ScratchError
from scratchlm.fileio import write_json_atomic, write_text_atomic

_STEP_DIR = re.compile(r"step_(\d+)")
_MODEL_CONFIG = "config.json"  # a model folder is recognised by its config.json (scratchlm.model.folder)


class RunDir:
    """A run folder at `path` (which may not exist yet)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints_root = self.path / "checkpoints"
        self.pointers_path = self.path / "latest.json"
        self.final = self.path / "final"
        self.tensorboard = self.path / "tensorboard"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def holds_run(self) -> bool:
        """True once a run has written metrics or a checkpoint here."""
        return self.metrics_path.exists() or bool(self.checkpoints())

    # ---- config.yaml ------------------------------------------------------------------------------

    def write_config(self, data: dict) -> None:
        write_text_atomic(self.config_path, yaml.safe_dump(data, sort_keys=False))

    def read_config(self) -> dict:
        """The saved configuration as a mapping ({} when the run has none)."""
        if not self.config_path.is_file():
            return {}
        try:
            return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ScratchError(f"{self.config_path} is not valid YAML ({e})".splitlines()[0]) from None

    # ---- metrics.jsonl: the one reader ------------------------------------------------------------

    def read_metrics(self, kind: str | None = None) -> list[dict]:
        """Every record (optionally of one kind); see `read_metrics`."""
        return read_metrics(self.metrics_path, kind)

    def append_record(self, record: dict) -> None:
        """Append one record from outside training (`scratchlm eval --run`), durable at once.

        Appended in place rather than rewritten through a rename: a training run still writing the file
        holds it open, and a renamed-over file would swallow its later lines. After a line cut short by
        a kill, the record starts on a line of its own.
        """
        with open(self.metrics_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            ends_cleanly = size == 0 or (f.seek(size - 1) >= 0 and f.read(1) == b"\n")
        with open(self.metrics_path, "a", encoding="utf-8") as f:  # O_APPEND: one small write lands whole
            f.write(("" if ends_cleanly else "\n") + json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def open_metrics(self, after_step: int) -> MetricsLog:
        """The metrics log for writing, with records past `after_step` dropped first: a resumed run writes
        them again, so the file then reads exactly like an uninterrupted run's."""
        if self.metrics_path.exists():
            keep = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
            write_text_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))
        return MetricsLog(self.metrics_path)

    # ---- checkpoints ------------------------------------------------------------------------------

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints_root / f"step_{step}"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, folder) of every checkpoint folder, oldest first (temporary folders are not listed)."""
        if not self.checkpoints_root.is_dir():
            return []
        found = [
            (s, p) for p in self.checkpoints_root.iterdir() if p.is_dir() and (s := step_of(p)) is not None
        ]
        return sorted(found)

    def pointers(self) -> dict:
        """latest.json ({} before the first checkpoint)."""
        try:
            return json.loads(self.pointers_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def prune(self, keep_last: int, keep_best: bool, is_complete) -> dict:
        """Delete checkpoints beyond the newest `keep_last` (and the best by validation loss, if kept).

        `is_complete(folder) -> (complete, val_loss)` reads a checkpoint's manifest only: it never
        re-hashes the kept checkpoints (each file was hashed once, when written; resume verifies).
        Returns the pointers, also written to latest.json so a person or a script finds the right folder.
        """
        complete = []
        for step, path in self.checkpoints():
            ok, val_loss = is_complete(path)
            if ok:
                complete.append((step, path, val_loss))
        if not complete:
            return {}
        keep = {path for _, path, _ in complete[-keep_last:]}
        best, best_loss = None, None
        for _, path, loss in complete:
            if loss is not None and (best_loss is None or loss < best_loss):
                best, best_loss = path, loss
        if keep_best and best is not None:
            keep.add(best)
        for _, path, _ in complete:
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
        pointers = {
            "last": self._relative(complete[-1][1]),
            "best": self._relative(best) if best is not None and best in keep else None,
            "best_val_loss": best_loss,
        }
        write_json_atomic(self.pointers_path, pointers)
        return pointers

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.path).as_posix()

    # ---- which model a run means ------------------------------------------------------------------

    def model_dir(self) -> Path | None:
        """The run's model: final/, else the best checkpoint (latest.json), else the newest one."""
        if (self.final / _MODEL_CONFIG).is_file():
            return self.final
        best = self.pointers().get("best")
        if best and (self.path / best / _MODEL_CONFIG).is_file():
            return self.path / best
        with_model = [p for _, p in self.checkpoints() if (p / _MODEL_CONFIG).is_file()]
        return with_model[-1] if with_model else None

    @classmethod
    def of_model(cls, model_dir: str | Path) -> RunDir | None:
        """The run a model folder belongs to (RUN/final, RUN/checkpoints/step_N or RUN itself), if any."""
        model_dir = Path(model_dir)
        candidates = [model_dir, model_dir.parent]
        if step_of(model_dir) is not None:
            candidates.append(model_dir.parent.parent)
        for folder in candidates:
            run = cls(folder)
            if run.config_path.is_file() or run.metrics_path.is_file():
                return run
        return None


class MetricsLog:
    """Append-only JSON Lines, flushed a line at a time: a killed run keeps everything up to its last step."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def write(self, record: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def step_of(path: str | Path) -> int | None:
    """N for a folder named step_N, else None: the one parser of that name."""
    m = _STEP_DIR.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict]:
    """The records of a metrics.jsonl file, optionally of one kind.

    A line that is not JSON is one cut short by a kill in mid-write (every writer writes whole lines and
    flushes); it is skipped, wherever a later append left it.
    """
    path = Path(path)
    if not path.is_file():
        raise ScratchError(f"{path} does not exist; give the folder of a training run")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or record.get("kind") == kind:
            records.append(record)
    return records


def resolve_model_dir(path: str | Path) -> Path:
    """The model folder `--ckpt PATH` means: PATH itself, or the model of the run at PATH."""
    path = Path(path)
    if not path.exists():
        raise ScratchError(f"{path}: no such folder; give a model folder or a training run folder")
    if (path / _MODEL_CONFIG).is_file():
        return path
    run = RunDir(path)
    found = run.model_dir()
    pointers = run.pointers()
    if found is not None and "stage" in pointers:  # a speedrun folder: say which stage's model it means
        print(
            f"{path}: the speedrun's {pointers['stage']} model ({pointers.get('why', '')})", file=sys.stderr
        )
    if found is None:
        raise ScratchError(
            f"{path}: not a model folder (no {_MODEL_CONFIG}) nor a run with final/ or checkpoints/"
        )
    return found
