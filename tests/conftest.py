"""Test settings: hermetic and offline.

- SCRATCHLM_DATA points at the shared mirror beside the checkout (../shared/data) unless set, so the
  named corpora resolve without a network.
- SCRATCHLM_CACHE points at a per-session temporary folder, so tests never read or write a user cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_mirror = ROOT.parent / "shared" / "data"
if "SCRATCHLM_DATA" not in os.environ and _mirror.is_dir():
    os.environ["SCRATCHLM_DATA"] = str(_mirror)

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["SCRATCHLM_CACHE"] = str(tmp_path_factory.mktemp("scratchlm-cache"))
    yield


def shakespeare_path() -> Path | None:
    """The Tiny Shakespeare mirror file, or None when the mirror is absent."""
    mirror = os.environ.get("SCRATCHLM_DATA")
    path = Path(mirror) / "tinyshakespeare.txt" if mirror else None
    return path if path and path.is_file() else None
