"""DeepSpeed ZeRO as an optional backend: `parallel: deepspeed`, `zero_stage: 1 | 2 | 3`.

    pip install -e '.[deepspeed]'
    torchrun --nproc-per-node=N -m scratchlm pretrain ... --set parallel=deepspeed --set zero_stage=2
    deepspeed --num_gpus N --no_local_rank $(which scratchlm) pretrain ...        # the same, its launcher

ZeRO (Rajbhandari et al. 2020) partitions over the ranks the optimizer state (stage 1), the gradients
too (stage 2), and the parameters too (stage 3, FSDP's layout). DeepSpeed owns the optimizer step here:
it wraps our optimizer, reduces or reduce-scatters the gradients, clips them (`grad_clip`) and steps.
Only `optim.name: adamw` runs under it: ZeRO flattens each group's parameters into 1-D partitions, and
Muon's Newton-Schulz step needs whole matrices (use `parallel: fsdp` for Muon). Parameters stay fp32 as
without DeepSpeed (bf16 comes from autocast), so the runs are comparable.

Its process group is ours (gloo on CPU; `DS_ACCELERATOR=cpu` when there is no GPU, which DeepSpeed
detects itself). Checkpoints under it hold the model folder (gathered on rank 0 under stage 3) and
DeepSpeed's own partitioned optimizer state in `step_N/deepspeed/`, written by every rank; unlike DCP it
does not reshard, so a run resumes on as many ranks as it was saved with.

Importing deepspeed takes seconds, so this module is imported only by runs that choose it.
"""

from __future__ import annotations

import contextlib
import logging

import deepspeed
import torch

STATE_TAG = "state"  # the one tag in step_N/deepspeed/ (DeepSpeed keeps one sub-folder per tag)


def initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, stage: int, grad_clip: float):
    """(engine, DeepSpeed's optimizer) for `model` and our `optimizer` under ZeRO `stage`."""
    config = {
        # DeepSpeed checks train_batch_size = micro batch x accumulation x ranks; it never batches for us
        # (the objective does), and the trainer marks each step's last micro-batch itself, so 1s do.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,  # our AdamW groups (roles, lrs) through ZeRO's wrapper
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # it logs its whole config at INFO
    engine, ds_optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=config, dist_init_required=False
    )
    return engine, ds_optimizer


def backward(engine, loss: torch.Tensor, last: bool) -> None:
    """One micro-batch's backward; gradients are reduced after the step's `last` one."""
    engine.set_gradient_accumulation_boundary(last)
    engine.backward(loss, scale_wrt_gas=False)  # the trainer divides by the step's token count already


def step(engine) -> None:
    """Clip, step, zero the gradients (DeepSpeed does all three at the boundary)."""
    engine.step()


def is_engine(model) -> bool:
    return isinstance(model, deepspeed.DeepSpeedEngine)


@contextlib.contextmanager
def gathered(module: torch.nn.Module):
    """Whole parameters on every rank within (stage 3 partitions them; a collective); else nothing."""
    params = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def save(engine, folder) -> None:
    """Every rank writes its partitions of DeepSpeed's state into `folder` (shared by all ranks)."""
    engine.save_checkpoint(str(folder), tag=STATE_TAG, save_latest=False)


def load(engine, folder) -> None:
    engine.load_checkpoint(str(folder), tag=STATE_TAG, load_lr_scheduler_states=False)
