"""CPU training: let glibc's malloc keep freed activation buffers instead of returning them to the OS.

PyTorch's CPU tensors come from malloc. glibc serves blocks above its mmap threshold (128 KiB at first,
adapting upward only in some cases) with fresh mmap'ed pages and gives them back on free, so a training
step that frees and re-allocates megabyte-sized activations page-faults through them all again, every
step. Raising the mmap threshold to its ceiling and disabling heap trimming keeps the pages: the char
recipe's step goes from ~3,400 minor page faults to ~50 (a few percent of its time; docs/experiments.md).
This is the effect PyTorch's CPU performance guide gets by preloading jemalloc or tcmalloc. The price is
memory that stays with the process after a peak, the normal state of a training process anyway.

A property of the training process, not of the model: `Trainer` applies it when it trains on a CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems


def keep_freed_cpu_memory() -> bool:
    """Apply the tuning above; a no-op (False) where the C library is not glibc, True when applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    return bool(ok)
