"""Pooling layers in 1-3 dimensions: ``MaxPool3d``, ``AvgPool3d``, the adaptive pools,
``LPPool{1,2,3}d``, ``MaxUnpool{1,2,3}d``, and ``Fold``/``Unfold``, as ``torch.nn``.

No parameters; each ``apply`` calls the function of the same name in
:mod:`fdl.nn.functional` (see :mod:`fdl.nn._functional_pooling_nd` for what is a torch
kernel and what is written out).

Example:
    >>> import torch, fdl
    >>> fdl.nn.AdaptiveAvgPool1d(2).apply({}, torch.arange(4.0).reshape(1, 1, 4))
    tensor([[[0.5000, 2.5000]]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fdl.nn import _functional_pooling_nd as _F
from fdl.nn._base import Params
from fdl.nn._fn_layer import _FnLayer

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "AvgPool3d",
    "Fold",
    "LPPool1d",
    "LPPool2d",
    "LPPool3d",
    "MaxPool3d",
    "MaxUnpool1d",
    "MaxUnpool2d",
    "MaxUnpool3d",
    "Unfold",
]

_Size = int | Sequence[int]


class MaxPool3d(_FnLayer, fn=_F.max_pool3d):
    """Max over 3-d windows of ``(N, C, D, H, W)`` / ``(C, D, H, W)``; ``return_indices``
    gives ``(values, indices)``."""

    kernel_size: _Size
    stride: _Size | None = None
    padding: _Size = 0
    dilation: _Size = 1
    return_indices: bool = False
    ceil_mode: bool = False


class AvgPool3d(_FnLayer, fn=_F.avg_pool3d):
    """Mean over 3-d windows, with ``ceil_mode``, ``count_include_pad``, ``divisor_override``."""

    kernel_size: _Size
    stride: _Size | None = None
    padding: _Size = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None


class _AdaptivePool(_FnLayer):
    """The field of the adaptive pools: the output's spatial size."""

    output_size: Any


class _AdaptiveMaxPool(_AdaptivePool):
    """The fields of the adaptive max pools; ``return_indices`` as torch."""

    return_indices: bool = False


class AdaptiveAvgPool1d(_AdaptivePool, fn=_F.adaptive_avg_pool1d):
    """Mean over ``output_size`` adaptive windows of ``(N, C, L)`` / ``(C, L)``."""

    output_size: int


class AdaptiveAvgPool3d(_AdaptivePool, fn=_F.adaptive_avg_pool3d):
    """Mean over adaptive windows of ``(N, C, D, H, W)`` / ``(C, D, H, W)``."""


class AdaptiveMaxPool1d(_AdaptiveMaxPool, fn=_F.adaptive_max_pool1d):
    """Max over adaptive windows of ``(N, C, L)``; ``return_indices`` as torch."""

    output_size: int


class AdaptiveMaxPool2d(_AdaptiveMaxPool, fn=_F.adaptive_max_pool2d):
    """Max over adaptive windows of ``(N, C, H, W)``; ``return_indices`` as torch."""


class AdaptiveMaxPool3d(_AdaptiveMaxPool, fn=_F.adaptive_max_pool3d):
    """Max over adaptive windows of ``(N, C, D, H, W)``; ``return_indices`` as torch."""


class _LPPool(_FnLayer):
    """The fields of the power-mean pools: ``(sum_window x**norm_type) ** (1 / norm_type)``."""

    norm_type: float
    kernel_size: _Size
    stride: _Size | None = None
    ceil_mode: bool = False


class LPPool1d(_LPPool, fn=_F.lp_pool1d):
    """``(sum_window x**norm_type) ** (1 / norm_type)`` over 1-d windows."""

    kernel_size: int
    stride: int | None = None


class LPPool2d(_LPPool, fn=_F.lp_pool2d):
    """``(sum_window x**norm_type) ** (1 / norm_type)`` over 2-d windows."""


class LPPool3d(_LPPool, fn=_F.lp_pool3d):
    """``(sum_window x**norm_type) ** (1 / norm_type)`` over 3-d windows."""


class _MaxUnpool(_FnLayer):
    """Shared fields and apply of the unpools (``fn``: the functional of their dimension)."""

    kernel_size: _Size
    stride: _Size | None = None
    padding: _Size = 0

    def apply(
        self,
        params: Params,
        x: torch.Tensor,
        indices: torch.Tensor,
        output_size: Sequence[int] | None = None,
        *,
        key: Any = None,
        train: bool = False,
    ) -> torch.Tensor:
        """``x`` and the ``indices`` of the matching max pool -> the unpooled tensor."""
        return self._fn(x, indices, **self._kwargs(), output_size=output_size)


class MaxUnpool1d(_MaxUnpool, fn=_F.max_unpool1d):
    """Inverse of ``MaxPool1d``: ``apply(params, x, indices, output_size=None)``."""


class MaxUnpool2d(_MaxUnpool, fn=_F.max_unpool2d):
    """Inverse of ``MaxPool2d``: ``apply(params, x, indices, output_size=None)``."""


class MaxUnpool3d(_MaxUnpool, fn=_F.max_unpool3d):
    """Inverse of ``MaxPool3d``: ``apply(params, x, indices, output_size=None)``."""


class Unfold(_FnLayer, fn=_F.unfold):
    """Sliding local blocks: ``(N, C, H, W) -> (N, C * prod(kernel_size), L)``."""

    kernel_size: _Size
    dilation: _Size = 1
    padding: _Size = 0
    stride: _Size = 1


class Fold(_FnLayer, fn=_F.fold):
    """Sum sliding blocks into ``(N, C, *output_size)``: the adjoint of :class:`Unfold`."""

    output_size: _Size
    kernel_size: _Size
    dilation: _Size = 1
    padding: _Size = 0
    stride: _Size = 1
