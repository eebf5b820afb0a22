"""An FSDP run's checkpoint: a distributed checkpoint (torch.distributed.checkpoint, DCP) in which every
rank writes its own shards, inside the ordinary checkpoint folder.

    step_N/dcp/               .metadata (rank 0) and __R_0.distcp (rank R's shards): every trainable model
                              and its optimizer state, each tensor keyed by parameter name
    step_N/export/            the primary model's config.json and tokenizer/: with the weights in dcp/,
                              what `scratchlm export model --from-dcp` turns into a model folder
    step_N/trainer_state.pt   step, counters, the objective's state, RNG states (no optimizer: in dcp/)
    step_N/checkpoint.json    written last, with "layout": "dcp" (scratchlm.train.checkpoint)

Never half-written (`checkpoint.save_from_every_rank`): rank 0 makes the temporary folder
(`fileio.atomic_dir`) and broadcasts its name; every rank writes its shards into it; after a barrier rank
0 adds the rest, hashes every file into the manifest and renames the folder into place. A kill at any
point leaves a temporary folder, which is never listed as a checkpoint. Every rank must see the same
folder: on several machines the run folder has to be on a shared filesystem (docs/multi-node.md).

Loading reshards. DCP records each tensor's global shape and the offsets of every saved piece, and reads
into whatever layout the loading side asks for (`get_state_dict` / `set_state_dict` give the model's and
optimizer's state keyed by name under FSDP at any world size, or in one plain process), so a run saved by
two ranks resumes on one, or on four.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from scratchlm.errors import ScratchError
from scratchlm.model.config import ModelConfig
from scratchlm.model.folder import save_model
from scratchlm.model.transformer import Transformer
from scratchlm.tokenizer import load_tokenizer
from scratchlm.train import checkpoint as ckpt

DCP_DIR, EXPORT = "dcp", "export"
APP = "train"  # the one top-level key of the DCP state: {APP: {model name: {"model": ..., "optim": ...}}}


class TrainingState(Stateful):
    """Every trainable model with its optimizer, as DCP saves and loads them (one `Stateful`)."""

    def __init__(self, models: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer]):
        self.models, self.optimizers = models, optimizers

    def state_dict(self) -> dict:
        out = {}
        for name, optimizer in self.optimizers.items():
            model_state, optim_state = get_state_dict(self.models[name], optimizer)
            out[name] = {"model": model_state, "optim": optim_state}
        return out

    def load_state_dict(self, state: dict) -> None:
        for name, optimizer in self.optimizers.items():
            set_state_dict(
                self.models[name], optimizer,
                model_state_dict=state[name]["model"], optim_state_dict=state[name]["optim"],
            )  # fmt: skip


def save_sharded(path: Path, world, models, optimizers, state: dict, meta: dict, export) -> Path:
    """Write the checkpoint folder `path` from every rank (a collective).

    `models` / `optimizers`: the trainable ones by name; `state`: the trainer state (rank 0's);
    `export(folder)` writes the primary model's config.json and tokenizer/ into `folder` (rank 0).
    """
    app = {APP: TrainingState(models, optimizers)}
    meta = {**meta, "layout": ckpt.LAYOUT_DCP, "models": list(models)}

    def finish(tmp: Path) -> None:
        export(tmp / EXPORT)
        ckpt.finish_checkpoint(tmp, {}, state, meta)

    every_rank = lambda tmp: dcp.save(app, checkpoint_id=tmp / DCP_DIR)  # noqa: E731
    return ckpt.save_from_every_rank(path, world, every_rank, finish)


def load_sharded(path: Path, models, optimizers) -> None:
    """Read the models and optimizers of checkpoint `path` in place, resharded to this run's layout
    (FSDP over any number of ranks, or plain modules in one process)."""
    with _one_process():
        dcp.load({APP: TrainingState(models, optimizers)}, checkpoint_id=path / DCP_DIR)


@contextlib.contextmanager
def _one_process():
    """DCP warns whenever it runs without a process group, even when asked to: that is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def write_export(folder: Path, model: torch.nn.Module, tokenizer) -> None:
    """What a model folder holds beside its weights: the config and the tokenizer."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(model.config.to_json())
    tokenizer.save(folder / "tokenizer")


def export_model(step_dir: str | Path, out: str | Path) -> Path:
    """An ordinary model folder at `out` from the distributed checkpoint `step_dir`, in one process.

    DCP with no process group reads every rank's shards into whole tensors; only the primary model's
    weights are read (the optimizer state is left on disk)."""
    step_dir = Path(step_dir)
    problem = ckpt.verify_checkpoint(step_dir)
    if problem is not None:
        raise ScratchError(f"{step_dir}: {problem}; export from another checkpoint of the run")
    manifest = ckpt.read_manifest(step_dir)
    if manifest.get("layout") != ckpt.LAYOUT_DCP:
        raise ScratchError(
            f"{step_dir} is not a distributed checkpoint (it holds a model folder already); "
            "use it directly, or `scratchlm export hf --ckpt` it"
        )
    name = manifest["models"][0]
    config = ModelConfig.from_dict(json.loads((step_dir / EXPORT / "config.json").read_text()))
    tokenizer = load_tokenizer(step_dir / EXPORT / "tokenizer")
    model = Transformer(config)
    weights = model.state_dict()
    if config.tie_embeddings:
        del weights["lm_head.weight"]  # the embedding's tensor; DCP holds it once, as the embedding
    with _one_process():
        dcp.load({APP: {name: {"model": weights}}}, checkpoint_id=step_dir / DCP_DIR, no_dist=True)
    extra = {"step": manifest.get("step"), "exported_from": str(step_dir.resolve())}
    return save_model(out, model, tokenizer, extra=extra)
