"""Parity helpers for validating formulas against a reference.

fdl's own tests use these, and so can anyone checking a home-written loss,
layer or update rule against PyTorch (or against a direct formula):

- :func:`assert_trees_close` — compare pytrees leaf by leaf with per-dtype
  tolerances and a report of every failing leaf.
- :func:`assert_parity` — compare a function with a reference in value and
  in gradient with respect to every floating input.
- :func:`check_grads` — autodiff derivatives (first and higher order) against
  central finite differences in float64.
- :func:`assert_optimizer_parity` — train one small problem with an fdl
  optimizer and a ``torch.optim`` one and compare params at every step.
- :func:`assert_pure` — call a function and fail if it wrote to any input.

``fdl.testing.strategies`` (loaded on first use; needs ``hypothesis``) holds
hypothesis strategies for shapes, dtypes and tensors with extreme values.

Example:
    >>> import torch, fdl
    >>> fdl.testing.assert_trees_close({"w": torch.ones(2)}, {"w": torch.ones(2)})
"""

from __future__ import annotations

import importlib
from typing import Any

from fdl.testing._compare import assert_trees_close, default_tolerances
from fdl.testing._grads import check_grads
from fdl.testing._optim import assert_optimizer_parity, optimizer_problem
from fdl.testing._parity import assert_parity
from fdl.testing._pure import assert_pure

__all__ = [
    "assert_optimizer_parity",
    "assert_parity",
    "assert_pure",
    "assert_trees_close",
    "check_grads",
    "default_tolerances",
    "optimizer_problem",
    "strategies",
]


def __getattr__(name: str) -> Any:
    if name == "strategies":
        return importlib.import_module("fdl.testing.strategies")
    raise AttributeError(f"module 'fdl.testing' has no attribute {name!r}")
