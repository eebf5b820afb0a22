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

# The test models are tiny: a second OpenMP thread only adds a fork/join per small op, and on a busy
# 2-core machine it spin-waits for a descheduled partner (decode and eval tests ran 5-40x slower, measured).
# Tests that need several threads (none yet) set them themselves.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["SCRATCHLM_CACHE"] = str(tmp_path_factory.mktemp("scratchlm-cache"))
    yield


def shakespeare_path() -> Path | None:
    """The Tiny Shakespeare mirror file, or None when the mirror is absent."""
    mirror = os.environ.get("SCRATCHLM_DATA")
    path = Path(mirror) / "tinyshakespeare.txt" if mirror else None
    return path if path and path.is_file() else None
