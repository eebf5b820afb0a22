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


def maybe_compile(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """`torch.compile(model)` when asked; the compiled module shares the original's parameters."""
    return torch.compile(model) if enabled else model


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems


def keep_freed_cpu_memory() -> bool:
    """Let glibc's malloc reuse freed activation buffers instead of returning them to the OS.

    PyTorch's CPU tensors come from malloc. glibc serves blocks above its mmap threshold (128 KiB at
    first, adapting upward only in some cases) with fresh mmap'ed pages and gives them back on free, so a
    training step that frees and re-allocates megabyte-sized activations page-faults through them all
    again, every step. Raising the mmap threshold to its ceiling and disabling heap trimming keeps the
    pages: the char recipe's step goes from ~3,400 minor page faults to ~50 (a few percent of its time;
    docs/experiments.md). This is the effect PyTorch's CPU performance guide gets by preloading jemalloc
    or tcmalloc. The price is memory that stays with the process after a peak, the normal state of a
    training process anyway.

    A no-op (returning False) where the C library is not glibc; True when applied.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    return bool(ok)
