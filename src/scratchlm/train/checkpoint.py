"""Checkpoints that never lose a run: atomic folders, checksums, keep-last-K-and-best, verified resume.

A checkpoint is `RUN/checkpoints/step_N/`: a model folder (`save_model`: config, weights, tokenizer,
its own manifest) plus `trainer_state.pt` (optimizer, step, data-loader position, every RNG state,
elapsed time, best validation loss) plus `checkpoint.json`, written last, with the sha256 and size of
every other file in the folder.

Writing goes through `fileio.atomic_dir`: everything is written into a temporary folder beside the
target, fsync'ed, then renamed into place in one step, so a kill at any instant leaves either no folder
or a complete one. Reading checks every checksum first. A folder that fails (bit rot, a truncated copy,
a disk that filled up) is refused with a message that names the file; `find_resumable` then falls back
to the next older checkpoint and says so.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_dir, sha256_file, write_json_atomic

MANIFEST = "checkpoint.json"
STATE = "trainer_state.pt"
_STEP_DIR = re.compile(r"step_(\d+)")


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint folder in the run, oldest first (temporary folders ignored)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.fullmatch(p.name))
    ]
    return sorted(found)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    write_model: Callable[[Path], None],
    state: dict,
    val_loss: float | None = None,
) -> Path:
    """Write checkpoint `step` atomically. `write_model(folder)` writes the model folder into `folder`."""
    path = checkpoints_dir(run_dir) / f"step_{step}"
    with atomic_dir(path) as tmp:
        write_model(tmp)
        torch.save(state, tmp / STATE)
        files = {
            f.relative_to(tmp).as_posix(): {"sha256": sha256_file(f), "bytes": f.stat().st_size}
            for f in sorted(tmp.rglob("*"))
            if f.is_file()
        }
        write_json_atomic(tmp / MANIFEST, {"step": step, "val_loss": val_loss, "files": files})
    return path


def verify_checkpoint(path: str | Path) -> str | None:
    """None if every file listed in the manifest is present with its size and sha256; else what is wrong."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return f"{path.name} has no {MANIFEST} (an incomplete write)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError):
        return f"{path.name}/{MANIFEST} is unreadable"
    if STATE not in files:
        return f"{path.name} lists no {STATE}"
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{path.name}/{name} is missing"
        if f.stat().st_size != want["bytes"]:
            size = f.stat().st_size
            return f"{path.name}/{name} is truncated or resized ({size} bytes, expected {want['bytes']})"
        if sha256_file(f) != want["sha256"]:
            return f"{path.name}/{name} fails its sha256 check (corrupted)"
    return None


def read_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / MANIFEST).read_text())


def load_state(path: str | Path) -> dict:
    """The trainer state of a verified checkpoint. It holds numpy RNG arrays, hence weights_only=False:
    the file is one this project wrote and whose sha256 was just checked."""
    return torch.load(Path(path) / STATE, map_location="cpu", weights_only=False)


def find_resumable(run_dir: str | Path, say: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint that passes verification; each newer one that fails is reported by `say`.

    None when the run has no checkpoint at all; a ScratchError when it has some but none is intact.
    """
    found = list_checkpoints(run_dir)
    if not found:
        return None
    refused = []
    for _step, path in reversed(found):
        problem = verify_checkpoint(path)
        if problem is None:
            if refused:
                say(f"resume: refused {', '.join(refused)}; falling back to {path.name}")
            return path
        refused.append(problem)
    raise ScratchError(
        f"no intact checkpoint in {checkpoints_dir(run_dir)}: {'; '.join(refused)}; "
        "start again without --resume (or into a new --out folder)"
    )


def prune(run_dir: str | Path, keep_last: int, keep_best: bool) -> dict:
    """Delete checkpoints beyond the newest `keep_last` (and the best by validation loss, if kept).

    Returns the pointers {"last": name, "best": name or None, "best_val_loss": float or None}, also
    written to RUN/latest.json, so a person or a script finds the right folder without listing.
    Corrupted checkpoints are never chosen as best, and never count towards the kept ones.
    """
    import shutil

    intact = [(step, p) for step, p in list_checkpoints(run_dir) if verify_checkpoint(p) is None]
    if not intact:
        return {}
    keep = {p for _, p in intact[-keep_last:]}
    best, best_loss = None, None
    for _, p in intact:
        loss = read_manifest(p).get("val_loss")
        if loss is not None and (best_loss is None or loss < best_loss):
            best, best_loss = p, loss
    if keep_best and best is not None:
        keep.add(best)
    for _, p in list_checkpoints(run_dir):
        if p not in keep and verify_checkpoint(p) is None:
            shutil.rmtree(p, ignore_errors=True)
    pointers = {
        "last": f"checkpoints/{intact[-1][1].name}",
        "best": f"checkpoints/{best.name}" if best is not None and best in keep else None,
        "best_val_loss": best_loss,
    }
    write_json_atomic(Path(run_dir) / "latest.json", pointers)
    return pointers


def rng_states() -> dict:
    """Every RNG a training step may draw from (dropout: torch; user code: python, numpy)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
