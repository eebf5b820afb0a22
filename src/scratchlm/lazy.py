"""Packages whose public names load their module on first use (PEP 562).

`scratchlm.train`, `scratchlm.generate` and `scratchlm.eval` re-export their stages' functions, but the
command line builds its parser from their configs alone: importing a package must not pull in torch.
"""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(`__getattr__`, `__all__`) for `package`, where `exports` maps each public name to its module."""

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(exports)
