"""fdl: functional deep learning on PyTorch.

Models are pure functions over parameter pytrees, optimizers are stateless
update rules, and training is a pure step function compiled with
``torch.compile``. Subpackages load on first use::

    import fdl
    layer = fdl.nn.Linear(3, 2)
    params = layer.init(fdl.random.key(0))
"""

from __future__ import annotations

import importlib
from typing import Any

from fdl import allocator, random, tree

__version__ = "0.1.0"

_SUBMODULES = {
    "checkpoint",
    "data",
    "distributed",
    "ensemble",
    "explain",
    "losses",
    "metrics",
    "monitor",
    "nn",
    "optim",
    "per_sample",
    "privacy",
    "reporting",
    "robust",
    "testing",
    "train",
}

# top-level names re-exported from submodules: name -> (module, attribute)
_REEXPORTS = {
    "per_sample_grads": ("per_sample", "per_sample_grads"),
    "per_sample_grad_norms": ("per_sample", "per_sample_grad_norms"),
}

__all__ = ["__version__", "allocator", "random", "tree", *sorted(_SUBMODULES), *sorted(_REEXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"fdl.{name}")
    if name in _REEXPORTS:
        module, attr = _REEXPORTS[name]
        return getattr(importlib.import_module(f"fdl.{module}"), attr)
    raise AttributeError(f"module 'fdl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
