"""Data parallelism under torchrun, applied from outside the model.

`torchrun --nproc_per_node=N -m scratchlm pretrain ...` starts N copies of the same command with RANK,
LOCAL_RANK and WORLD_SIZE in their environment. `setup()` joins them into one process group (NCCL between
GPUs, gloo between CPU processes) and picks each rank's device; the loop then wraps the model in
DistributedDataParallel, which all-reduces (averages) gradients during backward. Each rank reads its own
slice of every batch; only rank 0 writes files. Without torchrun, `setup()` returns a world of one and
nothing else changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# How ranks share the work (scratchlm.train.parallel applies them); here so configs need not import FSDP.
PARALLEL_MODES = ("auto", "none", "ddp", "fsdp", "deepspeed")


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    launched: bool = False  # started by torchrun (even as a world of one)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def setup(device: torch.device, join_alone: bool = False) -> World:
    """Join the torchrun process group if there is one; `device` is the single-process choice.

    `join_alone`: make a process group in a torchrun world of one too (FSDP's device mesh and DeepSpeed
    need one even when there is nothing to shard across)."""
    launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 and not (launched and join_alone):
        return World(device=device, launched=launched)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return World(rank=rank, local_rank=local_rank, size=size, device=device, launched=True)


def teardown(world: World) -> None:
    if world.launched and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], world: World) -> list[float]:
    """Sum a few numbers over ranks (evaluation totals); identity in a world of one."""
    if not world.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank if it is true on any (a stop signal seen by one rank stops all together)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=world.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def broadcast_object(obj, world: World):
    """Rank 0's value of a picklable object on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
