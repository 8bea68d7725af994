"""``FractionalMaxPool2d`` and ``FractionalMaxPool3d``: window placement drawn from a key.

``apply(params, x, key=k)`` draws one sample per ``(n, c)`` and spatial dimension from
``key`` (torch draws from its global RNG on every call, in training and evaluation alike);
``_random_samples`` fixes them, as torch's argument does. See
:mod:`fdl.nn._functional_fractional_pool` for the intervals.

Example:
    >>> import torch, fdl
    >>> pool = fdl.nn.FractionalMaxPool2d(2, output_ratio=(0.5, 0.5))
    >>> pool.apply({}, torch.randn(1, 2, 8, 8), key=fdl.random.key(0)).shape
    torch.Size([1, 2, 4, 4])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field
from typing import Any

import torch

from fdl.nn import _functional_fractional_pool as _F
from fdl.nn._base import OptKey, Params, Tensor
from fdl.nn._fn_layer import _FnLayer

__all__ = ["FractionalMaxPool2d", "FractionalMaxPool3d"]


class _FractionalMaxPool(_FnLayer):
    """Shared fields, checks and apply (``fn``: the functional of their dimension)."""

    kernel_size: int | Sequence[int]
    output_size: int | Sequence[int] | None = None
    output_ratio: float | Sequence[float] | None = None
    return_indices: bool = False
    _random_samples: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def _check_fields(self) -> None:
        name = type(self).__name__
        if (self.output_size is None) == (self.output_ratio is None):
            raise ValueError(f"{name}: give exactly one of output_size and output_ratio")
        if self.output_ratio is not None:
            r = self.output_ratio
            ratios = (r,) if isinstance(r, (int, float)) else tuple(r)
            if not all(0 < v < 1 for v in ratios):
                raise ValueError(f"{name}: output_ratio must be in (0, 1), got {r}")

    def apply(self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False) -> Any:
        """``(N, C, *spatial) -> (N, C, *out)`` (or ``(values, indices)``); ``key`` required."""
        return self._fn(x, **self._kwargs(), key=key)


class FractionalMaxPool2d(_FractionalMaxPool, fn=_F.fractional_max_pool2d):
    """Fractional max pooling of ``(N, C, H, W)`` / ``(C, H, W)``."""


class FractionalMaxPool3d(_FractionalMaxPool, fn=_F.fractional_max_pool3d):
    """Fractional max pooling of ``(N, C, D, H, W)`` / ``(C, D, H, W)``."""
