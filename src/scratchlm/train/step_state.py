"""A training step's models and optimizers in and out of a checkpoint folder, for each parallel mode.

The trainer decides when to save and what the step's counters are; this module decides where the models
and optimizer states go, which depends on how the ranks share them:

    none, ddp   rank 0 writes every model folder and the whole optimizer states (trainer_state.pt)
    fsdp        every rank writes its shards: a distributed checkpoint (scratchlm.train.sharded_checkpoint)
    deepspeed   rank 0 writes the model folders (ZeRO-3: gathered first); every rank writes its partition
                of DeepSpeed's state into step_N/deepspeed/ (scratchlm.train.zero)

Each layout is recorded in the manifest (`checkpoint.layout`), and `RESUMES` says which modes can read it.
"""

from __future__ import annotations

import functools
from pathlib import Path

from scratchlm.errors import ScratchError
from scratchlm.train import checkpoint as ckpt
from scratchlm.train import sharded_checkpoint as sharded

# DCP reshards into FSDP or into whole modules; a whole optimizer state does not fit FSDP's shards;
# DeepSpeed reads only its own.
RESUMES = {
    ckpt.LAYOUT_FOLDER: ("none", "ddp"),
    ckpt.LAYOUT_DCP: ("fsdp", "none", "ddp"),
    ckpt.LAYOUT_DEEPSPEED: ("deepspeed",),
}


def save(path: Path, world, mode: str, zero, objective, models, optimizers, state, meta, extra) -> None:
    """Write checkpoint `path` (every rank calls it). `models`: the wrapped ones (a DeepSpeed engine);
    `state`: the trainer state; `meta`: the manifest's fields; `extra`: each model folder's."""
    write_models = functools.partial(_write_models, objective, extra)
    if mode == "fsdp":
        primary = objective.models[objective.trainable[0]]
        export = functools.partial(sharded.write_export, model=primary, tokenizer=objective.tokenizer)
        trained = {name: objective.models[name] for name in objective.trainable}
        sharded.save_sharded(path, world, trained, optimizers, state, meta, export)
    elif mode == "deepspeed":
        hashes = {}
        name = objective.trainable[0]

        def every_rank(tmp: Path) -> None:
            zero.save(models[name], tmp / ckpt.LAYOUT_DEEPSPEED)
            with zero.gathered(objective.models[name]):  # stage 3: whole weights for rank 0
                if world.is_main:
                    hashes.update(write_models(tmp))

        finish = functools.partial(ckpt.finish_checkpoint, hashes=hashes, state=state,
                                   meta={**meta, "layout": ckpt.LAYOUT_DEEPSPEED})  # fmt: skip
        ckpt.save_from_every_rank(path, world, every_rank, finish)
    elif world.is_main:
        state = {**state, "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()}}
        ckpt.save_checkpoint(path, write_models, state, meta)


def restore(path: Path, world, mode: str, zero, objective, models, optimizers, state: dict) -> None:
    """Read checkpoint `path`'s models and optimizer states in place (every rank calls it)."""
    layout = ckpt.layout(path)
    if mode not in RESUMES[layout]:
        raise ScratchError(
            f"{path} holds {layout} checkpoints, which parallel: {mode} cannot resume; resume with "
            f"parallel: {' or '.join(RESUMES[layout])}, or start a new --out folder"
        )
    if layout == ckpt.LAYOUT_DCP:  # resharded to this run's layout
        sharded.load_sharded(path, {name: objective.models[name] for name in optimizers}, optimizers)
    elif layout == ckpt.LAYOUT_DEEPSPEED:
        if state["world_size"] != world.size:
            raise ScratchError(
                f"{path} was saved by {state['world_size']} DeepSpeed ranks; DeepSpeed resumes on as many "
                f"(this run has {world.size})"
            )
        zero.load(models[objective.trainable[0]], path / ckpt.LAYOUT_DEEPSPEED)
    else:
        read = getattr(objective, "read_model", None)  # an objective that writes more than weights
        for index, name in enumerate(objective.trainable):
            folder = path if index == 0 else path / ckpt.MODELS / name
            if read is not None:
                read(name, folder)
            else:
                ckpt.read_module_into(objective.models[name], folder)
            optimizers[name].load_state_dict(state["optimizers"][name])


def _write_models(objective, extra: dict, folder: Path) -> dict[str, str]:
    """Every trainable model's folder into a checkpoint folder; {relative path: sha256} hashed already."""
    hashes = {}
    for index, name in enumerate(objective.trainable):
        where = folder if index == 0 else folder / ckpt.MODELS / name
        prefix = "" if index == 0 else f"{ckpt.MODELS}/{name}/"
        for rel, digest in (objective.write_model(name, where, extra) or {}).items():
            hashes[prefix + rel] = digest
    return hashes
