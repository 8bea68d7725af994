"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import fdl

# Point at the shared MNIST copy when the environment does not say otherwise.
_SHARED = Path(__file__).resolve().parent.parent / "shared" / "data"
if "FDL_DATA_DIR" not in os.environ and (_SHARED / "MNIST" / "raw").is_dir():
    os.environ["FDL_DATA_DIR"] = str(_SHARED)


# Tests work on small tensors, where a second thread costs more in synchronisation
# than it gains (and on a loaded machine, far more). One thread also makes every
# reduction order fixed.
torch.set_num_threads(1)


@pytest.fixture
def key() -> torch.Tensor:
    """A fresh fdl.random key."""
    return fdl.random.key(0)
