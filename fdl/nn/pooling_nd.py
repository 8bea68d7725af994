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
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fdl.nn import _functional_pooling_nd as _F
from fdl.nn._base import Layer, Params
from fdl.nn.piecewise_activations import _Pointwise

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


def _hashable(layer: Any, *fields: str) -> None:
    for f in fields:
        v = getattr(layer, f)
        if isinstance(v, list):
            object.__setattr__(layer, f, tuple(v))


@dataclass(frozen=True)
class MaxPool3d(_Pointwise):
    """Max over 3-d windows of ``(N, C, D, H, W)`` / ``(C, D, H, W)``; ``return_indices``
    gives ``(values, indices)``."""

    kernel_size: _Size
    stride: _Size | None = None
    padding: _Size = 0
    dilation: _Size = 1
    return_indices: bool = False
    ceil_mode: bool = False

    def __post_init__(self) -> None:
        _hashable(self, "kernel_size", "stride", "padding", "dilation")

    def _forward(self, x: torch.Tensor) -> Any:
        return _F.max_pool3d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            self.return_indices,
        )


@dataclass(frozen=True)
class AvgPool3d(_Pointwise):
    """Mean over 3-d windows, with ``ceil_mode``, ``count_include_pad``, ``divisor_override``."""

    kernel_size: _Size
    stride: _Size | None = None
    padding: _Size = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None

    def __post_init__(self) -> None:
        _hashable(self, "kernel_size", "stride", "padding")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.avg_pool3d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


@dataclass(frozen=True)
class AdaptiveAvgPool1d(_Pointwise):
    """Mean over ``output_size`` adaptive windows of ``(N, C, L)`` / ``(C, L)``."""

    output_size: int

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.adaptive_avg_pool1d(x, self.output_size)


@dataclass(frozen=True)
class AdaptiveAvgPool3d(_Pointwise):
    """Mean over adaptive windows of ``(N, C, D, H, W)`` / ``(C, D, H, W)``."""

    output_size: Any

    def __post_init__(self) -> None:
        _hashable(self, "output_size")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.adaptive_avg_pool3d(x, self.output_size)


@dataclass(frozen=True)
class AdaptiveMaxPool1d(_Pointwise):
    """Max over adaptive windows of ``(N, C, L)``; ``return_indices`` as torch."""

    output_size: int
    return_indices: bool = False

    def _forward(self, x: torch.Tensor) -> Any:
        return _F.adaptive_max_pool1d(x, self.output_size, self.return_indices)


@dataclass(frozen=True)
class AdaptiveMaxPool2d(_Pointwise):
    """Max over adaptive windows of ``(N, C, H, W)``; ``return_indices`` as torch."""

    output_size: Any
    return_indices: bool = False

    def __post_init__(self) -> None:
        _hashable(self, "output_size")

    def _forward(self, x: torch.Tensor) -> Any:
        return _F.adaptive_max_pool2d(x, self.output_size, self.return_indices)


@dataclass(frozen=True)
class AdaptiveMaxPool3d(_Pointwise):
    """Max over adaptive windows of ``(N, C, D, H, W)``; ``return_indices`` as torch."""

    output_size: Any
    return_indices: bool = False

    def __post_init__(self) -> None:
        _hashable(self, "output_size")

    def _forward(self, x: torch.Tensor) -> Any:
        return _F.adaptive_max_pool3d(x, self.output_size, self.return_indices)


@dataclass(frozen=True)
class LPPool1d(_Pointwise):
    """``(sum_window x**norm_type) ** (1 / norm_type)`` over 1-d windows."""

    norm_type: float
    kernel_size: int
    stride: int | None = None
    ceil_mode: bool = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.lp_pool1d(x, self.norm_type, self.kernel_size, self.stride, self.ceil_mode)


@dataclass(frozen=True)
class LPPool2d(_Pointwise):
    """``(sum_window x**norm_type) ** (1 / norm_type)`` over 2-d windows."""

    norm_type: float
    kernel_size: _Size
    stride: _Size | None = None
    ceil_mode: bool = False

    def __post_init__(self) -> None:
        _hashable(self, "kernel_size", "stride")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.lp_pool2d(x, self.norm_type, self.kernel_size, self.stride, self.ceil_mode)


@dataclass(frozen=True)
class LPPool3d(_Pointwise):
    """``(sum_window x**norm_type) ** (1 / norm_type)`` over 3-d windows."""

    norm_type: float
    kernel_size: _Size
    stride: _Size | None = None
    ceil_mode: bool = False

    def __post_init__(self) -> None:
        _hashable(self, "kernel_size", "stride")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.lp_pool3d(x, self.norm_type, self.kernel_size, self.stride, self.ceil_mode)


class _MaxUnpool(Layer):
    """Shared fields and apply of the unpools; ``n`` is the number of spatial dimensions."""

    n: ClassVar[int] = 0
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
        unpool = (_F.max_unpool1d, _F.max_unpool2d, _F.max_unpool3d)[self.n - 1]
        return unpool(x, indices, self.kernel_size, self.stride, self.padding, output_size)


@dataclass(frozen=True)
class MaxUnpool1d(_MaxUnpool):
    """Inverse of ``MaxPool1d``: ``apply(params, x, indices, output_size=None)``."""

    n: ClassVar[int] = 1


@dataclass(frozen=True)
class MaxUnpool2d(_MaxUnpool):
    """Inverse of ``MaxPool2d``: ``apply(params, x, indices, output_size=None)``."""

    n: ClassVar[int] = 2


@dataclass(frozen=True)
class MaxUnpool3d(_MaxUnpool):
    """Inverse of ``MaxPool3d``: ``apply(params, x, indices, output_size=None)``."""

    n: ClassVar[int] = 3


@dataclass(frozen=True)
class Unfold(_Pointwise):
    """Sliding local blocks: ``(N, C, H, W) -> (N, C * prod(kernel_size), L)``."""

    kernel_size: _Size
    dilation: _Size = 1
    padding: _Size = 0
    stride: _Size = 1

    def __post_init__(self) -> None:
        _hashable(self, "kernel_size", "dilation", "padding", "stride")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)


@dataclass(frozen=True)
class Fold(_Pointwise):
    """Sum sliding blocks into ``(N, C, *output_size)``: the adjoint of :class:`Unfold`."""

    output_size: _Size
    kernel_size: _Size
    dilation: _Size = 1
    padding: _Size = 0
    stride: _Size = 1

    def __post_init__(self) -> None:
        _hashable(self, "output_size", "kernel_size", "dilation", "padding", "stride")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.fold(
            x, self.output_size, self.kernel_size, self.dilation, self.padding, self.stride
        )
