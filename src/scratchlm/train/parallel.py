"""Data parallelism applied from outside the model: `parallelize(model, world, config)`.

`parallel` in a recipe chooses how the ranks under torchrun share the work:

- `auto` (the default): DDP under torchrun with more than one process, nothing otherwise.
- `ddp`: every rank holds the whole model, optimizer state included; DistributedDataParallel averages
  gradients in backward (an all-reduce per bucket).
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`). Each rank holds 1/world of every parameter,
  gradient and optimizer state; a block all-gathers its weights just before its forward and backward and
  frees them after, and gradients are reduce-scattered. As in torchtitan's `parallelize_llama`, each
  transformer block is one sharding unit and the root (embeddings, final norm, head) another. The modules
  are sharded in place: build the optimizer after `parallelize`, from the same module.
- `deepspeed`: DeepSpeed ZeRO stage `zero_stage` (scratchlm.train.zero, an optional extra); the trainer
  hands it the optimizer and the backward.
- `none`: no wrapper: one process (several would train unsynchronised copies, so that is refused).

Checkpoints of an FSDP run are distributed checkpoints (scratchlm.train.sharded_checkpoint); the model
folder written at the end is gathered on rank 0 (`gathered`).
"""

from __future__ import annotations

import contextlib
import importlib
import os

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.nn.parallel import DistributedDataParallel

from scratchlm.errors import ScratchError
from scratchlm.train.distributed import PARALLEL_MODES, World


def resolve(mode: str, world: World) -> str:
    """The mode a run uses (`auto` made concrete); a ScratchError for a mode this launch cannot run."""
    if mode not in PARALLEL_MODES:
        raise ScratchError(f"parallel: {mode!r} is unknown; use {', '.join(PARALLEL_MODES)}")
    if mode == "deepspeed":
        if world.device.type == "cpu":
            # DeepSpeed picks its accelerator when imported. Left to detect it on a machine without a GPU,
            # a 2-process run aborted at exit in 1 of 2 tries ("terminate called without an active
            # exception"); told, 8 of 8 ran clean (measured 2026-12-01).
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        try:
            importlib.import_module("deepspeed")
        except ImportError as e:
            raise ScratchError(
                f"parallel: deepspeed needs DeepSpeed, which is not installed ({e}); "
                "pip install -e '.[deepspeed]', or use parallel=fsdp"
            ) from None
    if mode == "auto":
        return "ddp" if world.distributed else "none"
    if mode == "none" and world.distributed:
        raise ScratchError(
            f"parallel: none with {world.size} processes would train {world.size} separate copies; "
            "use auto, ddp or fsdp"
        )
    if mode in ("fsdp", "ddp", "deepspeed") and not world.launched:
        raise ScratchError(
            f"parallel: {mode} needs torchrun; launch with `torchrun --nproc-per-node=N -m scratchlm ...` "
            "(or set parallel=auto for one process)"
        )
    return mode


def parallelize(model: nn.Module, world: World, mode: str, *, bf16: bool, cpu_offload: bool) -> nn.Module:
    """`model` under `mode` ("none", "ddp" or "fsdp", from `resolve`); returns the module to call.

    DDP returns a wrapper (the optimizer still takes `model`'s parameters); FSDP shards `model` in place
    and returns it. `bf16`: under FSDP on CUDA, gather parameters in bf16 and reduce gradients in fp32
    (MixedPrecisionPolicy); on CPU autocast alone does it, as without FSDP. `cpu_offload`: FSDP keeps the
    sharded parameters, gradients and optimizer state in host memory and steps the optimizer there.
    """
    if mode == "ddp" and world.distributed:
        ids = [world.device.index] if world.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if mode != "fsdp":
        return model
    if cpu_offload and world.device.type != "cuda":
        # CPUOffloadPolicy pins host memory for copies to and from the GPU; on CPU there is nothing to do.
        raise ScratchError("fsdp_cpu_offload moves FSDP's shards off the GPU; this run is on CPU: drop it")
    # The mesh is made explicitly, on the device type in use: with a gloo group and no mesh,
    # fully_shard can pick a CUDA mesh on a CPU run and crash (pytorch/pytorch#132471).
    mesh = init_device_mesh(world.device.type, (world.size,))
    cuda_bf16 = bf16 and world.device.type == "cuda"
    settings = {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if cuda_bf16
        else MixedPrecisionPolicy(),
        "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy(),
    }
    for block in _blocks(model):
        fully_shard(block, **settings)
    fully_shard(model, **settings)  # the root: embeddings, final norm and head, and any other leftovers
    return model


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: the children of the first ModuleList named `layers` (a wrapper's too)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "layers" and isinstance(module, nn.ModuleList):
            return list(module)
    return []


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def no_sync(model: nn.Module):
    """A context in which backward accumulates gradients locally (every micro-batch of a step but the
    last): DDP's `no_sync`, FSDP2's `set_requires_gradient_sync(False)`, nothing otherwise."""
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    if isinstance(model, FSDPModule):
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model: FSDPModule):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


@contextlib.contextmanager
def gathered(model: nn.Module):
    """Within, `model.state_dict()` on rank 0 gives whole CPU tensors, so the ordinary model-folder
    writers work unchanged. A collective under FSDP: every rank enters, rank 0 writes.

    The gather happens once, on entry (DCP's full_state_dict with cpu_offload: rank 0 alone holds the
    copy, in host memory); a state-dict hook then hands those tensors out in place of the shards.
    """
    if not is_sharded(model):
        yield
        return
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def whole(name: str):
        def hook(module, state, prefix, local_metadata):
            for key in state:
                if key.startswith(prefix):
                    state[key] = full[name + key[len(prefix) :]]

        return hook

    # On every module, not the root alone: a writer may ask a part for its state (a reward model's body
    # and its head are written apart). nn.Module's post-hook runs after that module's subtree.
    handles = [
        module._register_state_dict_hook(whole(f"{name}." if name else ""))
        for name, module in model.named_modules()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
