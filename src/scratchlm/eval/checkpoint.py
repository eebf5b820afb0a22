"""Find and load the model an evaluation is about: a model folder, or a run folder's best guess.

`--ckpt` may name a model folder (config.json + model.safetensors + tokenizer/), a training run folder
(its `final/` model, else its newest `checkpoints/step_N/`), so "evaluate this run" needs no path digging.
"""

from __future__ import annotations

import re
from pathlib import Path

from scratchlm.errors import ScratchError


def resolve_model_dir(path: str | Path) -> Path:
    """The model folder `path` means (itself, its run's final/, or its newest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise ScratchError(f"--ckpt {path}: no such folder; give a model folder or a training run folder")
    if (path / "config.json").is_file():
        return path
    if (path / "final" / "config.json").is_file():
        return path / "final"
    steps = []
    for child in (path / "checkpoints").glob("step_*"):
        if (m := re.fullmatch(r"step_(\d+)", child.name)) and (child / "config.json").is_file():
            steps.append((int(m.group(1)), child))
    if steps:
        return max(steps)[1]
    raise ScratchError(
        f"--ckpt {path}: not a model folder (no config.json) nor a run with final/ or checkpoints/"
    )


def load_checkpoint(path: str | Path, device: str | None = None):
    """(model in eval mode, tokenizer, manifest) from a model or run folder."""
    from scratchlm.model.folder import load_model

    model, tokenizer, manifest = load_model(resolve_model_dir(path), device=device)
    model.eval()
    return model, tokenizer, manifest
