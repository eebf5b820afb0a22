"""Where the model runs and in which precision: device choice, bf16 autocast, optional torch.compile.

Policy lives here, not in the model: the transformer takes whatever device its parameters are on.
"""

from __future__ import annotations

import contextlib

import torch

from scratchlm.errors import ScratchError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """ "auto": CUDA when available, else Apple MPS, else CPU; or the named device, checked to exist."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ScratchError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScratchError(
            f"device {name!r} asked for but no CUDA GPU is available; use --device cpu or auto"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ScratchError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ScratchError(f"device {name!r} asked for but MPS is not available; use cpu or auto")
    return device


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """ "float32"/"fp32"/"bfloat16"/"bf16" (or a torch.dtype) -> torch.dtype; None means float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ScratchError(f"unknown dtype {dtype!r}; use float32 or bfloat16")
    return DTYPES[dtype]


def autocast_context(device: torch.device | str, dtype: str | torch.dtype | None = "bfloat16"):
    """bf16 autocast on CUDA and CPU (weights stay float32, matmuls run in bf16); float32: no-op."""
    device = torch.device(device)
    dtype = resolve_dtype(dtype)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
