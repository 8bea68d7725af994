"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import fdl

# Point at the shared MNIST copy when the environment does not say otherwise.
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "FDL_DATA_DIR" not in os.environ and (_SHARED / "MNIST" / "raw").is_dir():
    os.environ["FDL_DATA_DIR"] = str(_SHARED)


@pytest.fixture
def key() -> torch.Tensor:
    """A fresh fdl.random key."""
    return fdl.random.key(0)
