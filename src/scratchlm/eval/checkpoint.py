"""Find and load the model an evaluation is about: a model folder, or a run folder's best guess.

`--ckpt` may name a model folder (config.json + model.safetensors + tokenizer/), a training run folder
(its `final/`, else its best checkpoint, else
its newest; `scratchlm.train.run_dir` decides), so "evaluate this run" needs no path digging.
"""

from __future__ import annotations

from pathlib import Path

from scratchlm.model.folder import load_model
from scratchlm.train.run_dir import resolve_model_dir


def load_checkpoint(path: str | Path, device: str | None = None):
    """(model in eval mode, tokenizer, manifest) from a model or run folder."""
    model, tokenizer, manifest = load_model(resolve_model_dir(path), device=device)
    model.eval()
    return model, tokenizer, manifest
