"""The model folder: the one on-disk form of a model that every command reads and the trainer writes.

    <dir>/config.json         ModelConfig.to_dict(), the shape of the network
    <dir>/model.safetensors   the weights (float32 as trained; a tied lm_head is stored once, as the
                              embedding, and re-tied on load)
    <dir>/tokenizer/          the tokenizer folder (scratchlm.tokenizer's format)
    <dir>/manifest.json       written last: format, scratchlm version, parameter count, tokenizer
                              fingerprint, sha256 of every file above, and any `extra` the writer adds

The whole folder appears at once (scratchlm.fileio.atomic_dir), so a crash never leaves a folder that
looks complete. Other files beside these (a trainer's `trainer_state.pt`) are ignored by `load_model`.
Loading refuses, with a message that says what to do: a missing file, a file whose checksum differs from
the manifest (corrupt or truncated), a tokenizer that is not the recorded one, weights that do not fit the
configuration.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from scratchlm import __version__
from scratchlm.errors import ScratchError
from scratchlm.fileio import atomic_dir, read_tagged_json, save_safetensors, sha256_file
from scratchlm.model.config import ModelConfig
from scratchlm.model.device import pick_device, resolve_dtype
from scratchlm.model.transformer import Transformer

FORMAT = "scratchlm-model"
VERSION = 1
CONFIG, WEIGHTS, TOKENIZER, MANIFEST = "config.json", "model.safetensors", "tokenizer", "manifest.json"


def save_model(directory: str | Path, model: Transformer, tokenizer, extra: dict | None = None) -> Path:
    """Write `model` and `tokenizer` as a model folder at `directory`, atomically (replacing any old one)."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        write_model_files(tmp, model, tokenizer, extra)
    return directory


def write_model_files(
    directory: str | Path, model: Transformer, tokenizer, extra: dict | None = None
) -> dict:
    """The files of a model folder, into an existing (temporary) folder; returns the manifest.

    For writers that add their own files to the same atomic folder (a training checkpoint adds its
    optimizer state): `with atomic_dir(path) as tmp: write_model_files(tmp, ...); save(state, tmp / ...)`.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    if tokenizer.vocab_size > config.vocab_size:
        raise ScratchError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size} embeddings; "
            "build the model with vocab_size >= the tokenizer's"
        )
    (directory / CONFIG).write_text(config.to_json())
    save_safetensors(_weights_to_store(model), directory / WEIGHTS, metadata={"format": "pt"})
    tokenizer.save(directory / TOKENIZER)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "scratchlm_version": __version__,
        "num_params": model.num_params(),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "files": {p.relative_to(directory).as_posix(): sha256_file(p) for p in files},
        "extra": extra or {},
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _weights_to_store(model: Transformer) -> dict[str, torch.Tensor]:
    """The state dict with each tensor once: safetensors refuses two names for one storage."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        del state["lm_head.weight"]  # the same tensor as token_embedding.weight
    return {name: t.detach().contiguous().cpu() for name, t in state.items()}


def read_manifest(directory: str | Path) -> dict:
    """The manifest of a model folder, after checking every required file is present."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ScratchError(f"model folder {directory} does not exist; give the folder a model was saved to")
    missing = [name for name in (CONFIG, WEIGHTS, TOKENIZER, MANIFEST) if not (directory / name).exists()]
    if missing:
        raise ScratchError(
            f"model folder {directory} is incomplete (missing {', '.join(missing)}); "
            "it was not fully written: save or train it again"
        )
    return read_tagged_json(directory / MANIFEST, FORMAT, "model manifest", "save the model again", VERSION)


def verify_files(directory: str | Path, manifest: dict) -> None:
    """Check each file against its recorded sha256; the tokenizer folder gets its own message."""
    directory = Path(directory)
    for name, expected in manifest["files"].items():
        path = directory / name
        where = "tokenizer" if name.startswith(TOKENIZER + "/") else "file"
        if not path.is_file():
            raise ScratchError(f"model folder {directory} is incomplete: {name} is missing; save it again")
        if sha256_file(path) != expected:
            if where == "tokenizer":
                raise ScratchError(
                    f"{path} differs from the tokenizer this model was saved with (checksum mismatch); "
                    "put the original tokenizer back or save the model again"
                )
            raise ScratchError(
                f"{path} is corrupt or truncated (sha256 differs from {MANIFEST}); copy or save it again"
            )


def load_model(
    directory: str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    verify: bool = True,
):
    """Read a model folder -> (model in eval mode, tokenizer, manifest).

    `device`: a name for `pick_device` (None: CPU); `dtype`: cast the weights (None: as stored, float32).
    `verify=False` skips the checksums (they read every byte once) but no other check.
    """
    from scratchlm.tokenizer import load_tokenizer  # the tokenizer stage sits beside the model, not under it

    directory = Path(directory)
    manifest = read_manifest(directory)
    if verify:
        verify_files(directory, manifest)
    tokenizer = load_tokenizer(directory / TOKENIZER)
    if tokenizer.fingerprint() != manifest.get("tokenizer_fingerprint"):
        raise ScratchError(
            f"{directory / TOKENIZER} is not the tokenizer this model was trained with (fingerprint "
            f"{tokenizer.fingerprint()[:12]} vs recorded {str(manifest.get('tokenizer_fingerprint'))[:12]}); "
            "use the tokenizer saved with the model"
        )
    try:
        config = ModelConfig.from_dict(json.loads((directory / CONFIG).read_text()))
    except json.JSONDecodeError as e:
        raise ScratchError(f"{directory / CONFIG} is not valid JSON ({e}); save the model again") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise ScratchError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
            f"vocab_size {config.vocab_size}; the folder mixes two models"
        )
    with torch.device("meta"):
        model = Transformer(config)  # no memory and no random init for weights about to be replaced
    state = _read_weights(directory / WEIGHTS)
    _check_weights_fit(directory, model, state)
    if manifest.get("num_params") != model.num_params():
        raise ScratchError(
            f"{directory}: config.json gives {model.num_params()} parameters but the manifest records "
            f"{manifest.get('num_params')}; the folder mixes two models: save it again"
        )
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.token_embedding.weight
    target = pick_device(device) if device is not None else torch.device("cpu")
    model = model.to(device=target, dtype=resolve_dtype(dtype) if dtype is not None else None)
    return model.eval(), tokenizer, manifest


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ScratchError(f"{path} cannot be read as safetensors ({e}); save the model again") from None


def _check_weights_fit(directory: Path, model: Transformer, state: dict[str, torch.Tensor]) -> None:
    """Every expected tensor present with its shape, nothing unexpected: or one line saying which."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if model.config.tie_embeddings:
        expected.pop("lm_head.weight")
    problems = [f"missing {n}" for n in expected if n not in state]
    problems += [f"unexpected {n}" for n in state if n not in expected]
    problems += [
        f"{n} has shape {tuple(state[n].shape)}, config needs {shape}"
        for n, shape in expected.items()
        if n in state and tuple(state[n].shape) != shape
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ScratchError(
            f"{directory / WEIGHTS} does not fit {directory / CONFIG}: {problems[0]}{more}; "
            "the weights and configuration come from different models"
        )
