"""``Upsample``, ``UpsamplingNearest2d`` and ``UpsamplingBilinear2d``, as ``torch.nn``.

Each ``apply`` calls :func:`fdl.nn.functional.interpolate` (torch's resampling kernel).

Example:
    >>> import torch, fdl
    >>> fdl.nn.Upsample(scale_factor=2, mode="bilinear").apply({}, torch.zeros(1, 1, 2, 3)).shape
    torch.Size([1, 1, 4, 6])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fdl.nn import _functional_upsampling as _F
from fdl.nn._base import Layer, field
from fdl.nn.piecewise_activations import _Pointwise

__all__ = ["Upsample", "UpsamplingBilinear2d", "UpsamplingNearest2d"]


def _hashable(value: Any, layer: Layer) -> Any:
    """Lists become tuples, so that the layer stays hashable."""
    return tuple(value) if isinstance(value, list) else value


class _Resample(_Pointwise):
    """The output ``size`` or ``scale_factor`` shared by the upsampling layers."""

    size: int | Sequence[int] | None = field(default=None, converter=_hashable)
    scale_factor: float | Sequence[float] | None = field(default=None, converter=_hashable)


@dataclass(frozen=True)
class Upsample(_Resample):
    """Resample ``(N, C, *spatial)`` to ``size`` or by ``scale_factor`` with ``mode``.

    Args:
        size: output spatial size.
        scale_factor: spatial multiplier.
        mode: ``'nearest'`` | ``'linear'`` | ``'bilinear'`` | ``'bicubic'`` | ``'trilinear'``.
        align_corners: for the linear and cubic modes.
        recompute_scale_factor: compute the scale from the output size.
    """

    mode: str = "nearest"
    align_corners: bool | None = None
    recompute_scale_factor: bool | None = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.interpolate(
            x,
            self.size,
            self.scale_factor,
            self.mode,
            self.align_corners,
            self.recompute_scale_factor,
        )


@dataclass(frozen=True)
class UpsamplingNearest2d(_Resample):
    """``Upsample(size, scale_factor, mode='nearest')`` on ``(N, C, H, W)``."""

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.upsample_nearest(x, self.size, self.scale_factor)


@dataclass(frozen=True)
class UpsamplingBilinear2d(_Resample):
    """``Upsample(size, scale_factor, mode='bilinear', align_corners=True)`` on ``(N, C, H, W)``."""

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.upsample_bilinear(x, self.size, self.scale_factor)
