"""Test settings: hermetic and offline.

- SCRATCHLM_DATA points at the shared mirror beside the checkout (../shared/data) unless set, so the
  named corpora resolve without a network.
- SCRATCHLM_CACHE points at a per-session temporary folder, so tests never read or write a user cache.
"""

from __future__ import annotations

import os

import pytest
import torch

# shakespeare_path is re-exported: test_eval_tasks.py still imports it from here.
from support.paths import ROOT, shakespeare_path  # noqa: F401

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
