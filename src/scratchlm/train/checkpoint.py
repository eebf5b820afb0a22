"""One checkpoint folder: written atomically, each file hashed once, read back without running any code.

    step_N/                    the primary model's folder (config.json, model.safetensors, tokenizer/, ...)
    step_N/models/NAME/        every other trainable model, by name
    step_N/trainer_state.pt    step, optimizers by name, the objective's state, RNG states: tensors and
                               plain containers only, read with `torch.load(weights_only=True)`
    step_N/checkpoint.json     written last: format, step, objective, val_loss, sha256 and size of each file

An FSDP run's checkpoint (manifest `"layout": "dcp"`) holds a distributed checkpoint in place of the model
folders and optimizer states (scratchlm.train.sharded_checkpoint); a DeepSpeed run's (`"deepspeed"`) holds
the model folder and DeepSpeed's partitioned state (scratchlm.train.zero). Every rank writes its part
(`save_from_every_rank`); the trainer state and manifest here complete it as they complete any other.

Writing goes through `fileio.atomic_dir`, so a kill at any instant leaves no folder or a complete one.
Each file's sha256 is computed once, as it is written (the model folder's writer hands back the hashes it
computed), so saving costs the same however many checkpoints are kept; pruning reads manifests only.
Resume verifies the chosen checkpoint once against its manifest and falls back to the next older one
when a file is damaged.

Why `weights_only`: a run folder is something people hand to each other. A checksum beside a pickle
proves nothing (whoever rewrites the pickle rewrites the manifest), and a full unpickle runs whatever
code the file names. Restricted to tensors and plain containers, a crafted file is refused before any of
it runs.
"""

from __future__ import annotations

import io
import json
import pickle
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_dir, save_safetensors, sha256_file, write_json_atomic
from scratchlm.train import distributed
from scratchlm.train.run_dir import RunDir

FORMAT = "scratchlm-checkpoint"
MANIFEST = "checkpoint.json"
STATE = "trainer_state.pt"
MODELS = "models"  # trainable models other than the primary one live in MODELS/NAME/
WEIGHTS = "model.safetensors"
LAYOUT_FOLDER, LAYOUT_DCP, LAYOUT_DEEPSPEED = "folder", "dcp", "deepspeed"


def save_checkpoint(
    path: str | Path, write_models: Callable[[Path], dict[str, str] | None], state: dict, meta: dict
) -> Path:
    """Write the checkpoint folder `path` atomically.

    `write_models(folder)` writes the model files and returns {relative path: sha256} for the files it
    hashed already; any other file is hashed here, once. `meta` (step, objective, val_loss) goes into
    the manifest, which is written last.
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        finish_checkpoint(tmp, dict(write_models(tmp) or {}), state, meta)
    return path


def save_from_every_rank(path: Path, world, every_rank: Callable[[Path], None], finish) -> Path:
    """The checkpoint folder `path` written by every rank (sharded states): rank 0 makes the temporary
    folder and broadcasts its name, `every_rank(tmp)` runs on each (collectives allowed), and once all
    are done `finish(tmp)` (`finish_checkpoint`, say) runs on rank 0, which then renames the folder into
    place. A kill before the rename leaves only a temporary folder, which is never listed; every rank
    must see the same filesystem."""
    if not world.is_main:
        tmp = Path(distributed.broadcast_object(None, world))
        every_rank(tmp)
        distributed.barrier(world)
        return path
    with atomic_dir(path) as tmp:
        distributed.broadcast_object(str(tmp), world)
        every_rank(tmp)
        distributed.barrier(world)  # every rank's files are written before rank 0 hashes them
        finish(tmp)
    return path


def finish_checkpoint(tmp: Path, hashes: dict[str, str], state: dict, meta: dict) -> None:
    """The trainer state, then the manifest of every file in the (temporary) folder `tmp`, written last:
    what makes any checkpoint folder complete (a sharded one too: scratchlm.train.sharded_checkpoint).
    `hashes`: {relative path: sha256} of the files hashed already."""
    # Serialized in memory, written by Python: a full disk is then an OSError that names the file,
    # not the RuntimeError of torch's C++ zip writer.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (tmp / STATE).write_bytes(buffer.getvalue())
    files = {}
    for f in sorted(tmp.rglob("*")):
        if f.is_file():
            name = f.relative_to(tmp).as_posix()
            files[name] = {"sha256": hashes.get(name) or sha256_file(f), "bytes": f.stat().st_size}
    write_json_atomic(tmp / MANIFEST, {"format": FORMAT, **meta, "files": files})


def read_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / MANIFEST).read_text())


def layout(path: str | Path) -> str:
    """How the checkpoint holds its models: "folder" (model folders, a whole optimizer state in
    trainer_state.pt) or "dcp" (an FSDP run's distributed checkpoint: scratchlm.train.sharded_checkpoint)."""
    return read_manifest(path).get("layout", LAYOUT_FOLDER)


def is_complete(path: str | Path) -> tuple[bool, float | None]:
    """(has a readable manifest, its validation loss): what pruning needs, without hashing anything."""
    try:
        manifest = read_manifest(path)
    except (OSError, json.JSONDecodeError):
        return False, None
    return "files" in manifest, manifest.get("val_loss")


def verify_checkpoint(path: str | Path) -> str | None:
    """None if every file listed in the manifest is present with its size and sha256; else what is wrong."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return f"{path.name} has no {MANIFEST} (an incomplete write)"
    try:
        files = read_manifest(path)["files"]
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


def find_resumable(run: RunDir, say: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint that passes verification; each newer one that fails is reported by `say`.

    None when the run has no checkpoint at all; a ScratchError when it has some but none is intact.
    """
    found = run.checkpoints()
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
        f"no intact checkpoint in {run.checkpoints_root}: {'; '.join(refused)}; "
        "start again without --resume (or into a new --out folder)"
    )


def load_state(path: str | Path) -> dict:
    """The trainer state of a checkpoint, refusing anything but tensors and plain containers."""
    file = Path(path) / STATE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ScratchError(
            f"{file} holds objects other than tensors and plain data, so it was not written by scratchlm "
            f"or was altered; refused without running any of it ({reason[:160]})"
        ) from None


# ---- model weights in and out of a checkpoint ---------------------------------------------------------


def write_module(folder: Path, module: torch.nn.Module) -> dict[str, str]:
    """A plain module's weights as folder/model.safetensors (each tensor once: tied ones share storage)."""
    folder.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for name, tensor in module.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        state[name] = tensor.detach().contiguous().cpu()
    save_safetensors(state, folder / WEIGHTS)
    return {}


def read_module_into(module: torch.nn.Module, folder: Path) -> None:
    """Load folder/model.safetensors into `module` in place (no second model is built).

    A name may be absent only when its tensor is tied to one that is present (a tied lm_head)."""
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise ScratchError(f"{folder / WEIGHTS} cannot be read as safetensors ({e})") from None
    missing, unexpected = module.load_state_dict(state, strict=False)
    tensors = module.state_dict(keep_vars=True)
    owners: dict[int, set[str]] = {}  # the names of each tensor: a tied lm_head shares the embedding's
    for name, tensor in tensors.items():
        owners.setdefault(id(tensor), set()).add(name)
    untied = [n for n in missing if not (owners[id(tensors[n])] & set(state))]
    if untied or unexpected:
        problem = f"missing {untied[0]}" if untied else f"unexpected {unexpected[0]}"
        raise ScratchError(f"{folder / WEIGHTS} does not fit the model being resumed ({problem})")


# ---- RNG states as tensors ------------------------------------------------------------------------------


def rng_states() -> dict:
    """Every RNG a training step may draw from (dropout: torch; user code: python, numpy), as tensors."""
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },  # fmt: skip
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    py, npy = states["python"], states["numpy"]
    random.setstate((py["version"], tuple(py["keys"].tolist()), py["gauss"]))
    np_keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], np_keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
