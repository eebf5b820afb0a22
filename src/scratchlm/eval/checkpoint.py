"""Find and load the model an evaluation is about: a model folder, or a run folder's best guess.

`--ckpt` may name a model folder (config.json + model.safetensors + tokenizer/), a training run folder
(its `final/`, else its best checkpoint, else
its newest; `scratchlm.train.run_dir` decides), so "evaluate this run" needs no path digging.
"""

from __future__ import annotations

from pathlib import Path

from scratchlm.model.device import pick_device
from scratchlm.model.folder import load_model
from scratchlm.train.run_dir import resolve_model_dir


def load_checkpoint(path: str | Path, device: str | None = None, dtype: str | None = None):
    """(model in eval mode, tokenizer, manifest) from a model or run folder.

    `dtype` "auto" is the inference policy: bf16 on CUDA (the precision it trained in), float32 elsewhere
    (bf16 matmuls are slower than fp32 on most CPUs); None keeps the weights as stored (float32)."""
    if dtype == "auto":
        dtype = "bfloat16" if pick_device(device or "cpu").type == "cuda" else "float32"
    model, tokenizer, manifest = load_model(resolve_model_dir(path), device=device, dtype=dtype)
    model.eval()
    return model, tokenizer, manifest
