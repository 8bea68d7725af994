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


def _scalar_inductor_code_without_vector_isa() -> None:
    """Under ``ATEN_CPU_CAPABILITY=default`` torch 2.14's inductor still emits ``at::vec``
    C++ that does not build; scalar code (``cpp.simdlen = 1``) does (docs/testing.md)."""
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        import torch._inductor.config as inductor_config

        inductor_config.cpp.simdlen = 1


_scalar_inductor_code_without_vector_isa()


def _have_mnist() -> bool:
    root = os.environ.get("FDL_DATA_DIR")
    return bool(root) and (Path(root) / "MNIST" / "raw").is_dir()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the doctests that read MNIST when no copy is available (the tests skip likewise)."""
    if _have_mnist():
        return
    skip = pytest.mark.skip(reason="FDL_DATA_DIR is unset and ../shared/data is missing")
    for item in items:
        if item.name in ("fdl.data.mnist",):
            item.add_marker(skip)


@pytest.fixture
def key() -> torch.Tensor:
    """A fresh fdl.random key."""
    return fdl.random.key(0)
