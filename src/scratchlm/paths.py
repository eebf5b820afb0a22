"""Where scratchlm keeps files it downloads or builds for the user."""

from __future__ import annotations

import os
from pathlib import Path

from scratchlm.errors import ScratchError


def cache_dir() -> Path:
    """$SCRATCHLM_CACHE, else $XDG_CACHE_HOME/scratchlm, else ~/.cache/scratchlm."""
    if env := os.environ.get("SCRATCHLM_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scratchlm"


def mirror_dir() -> Path | None:
    """$SCRATCHLM_DATA: a local folder holding copies of the named corpora (tests and CI use it)."""
    env = os.environ.get("SCRATCHLM_DATA")
    return Path(env) if env else None


def expand_path(path: str, where: str) -> str:
    """`${SCRATCHLM_DATA}/chitchat/...` with the variable's value: a recipe names mirror files portably."""
    expanded = os.path.expandvars(str(path))
    if "$" in expanded:
        raise ScratchError(
            f"{where}: {path} names an environment variable that is not set (SCRATCHLM_DATA is the data "
            "mirror's folder); set it, or give the file's path"
        )
    return expanded
