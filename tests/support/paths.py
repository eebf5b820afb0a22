"""The checkout's root, and the Tiny Shakespeare mirror that tests/conftest.py points SCRATCHLM_DATA at."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def shakespeare_path() -> Path | None:
    """The Tiny Shakespeare mirror file, or None when the mirror is absent."""
    mirror = os.environ.get("SCRATCHLM_DATA")
    path = Path(mirror) / "tinyshakespeare.txt" if mirror else None
    return path if path and path.is_file() else None
