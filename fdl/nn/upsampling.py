"""``Upsample``, ``UpsamplingNearest2d`` and ``UpsamplingBilinear2d``, as ``torch.nn``.

Each ``apply`` calls :func:`fdl.nn.functional.interpolate` (torch's resampling kernel).

Example:
    >>> import torch, fdl
    >>> fdl.nn.Upsample(scale_factor=2, mode="bilinear").apply({}, torch.zeros(1, 1, 2, 3)).shape
    torch.Size([1, 1, 4, 6])
"""

from __future__ import annotations

from collections.abc import Sequence

from fdl.nn import _functional_upsampling as _F
from fdl.nn._fn_layer import _FnLayer

__all__ = ["Upsample", "UpsamplingBilinear2d", "UpsamplingNearest2d"]


class _Resample(_FnLayer):
    """The output ``size`` or ``scale_factor`` shared by the upsampling layers."""

    size: int | Sequence[int] | None = None
    scale_factor: float | Sequence[float] | None = None


class Upsample(_Resample, fn=_F.interpolate):
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


class UpsamplingNearest2d(_Resample, fn=_F.upsample_nearest):
    """``Upsample(size, scale_factor, mode='nearest')`` on ``(N, C, H, W)``."""


class UpsamplingBilinear2d(_Resample, fn=_F.upsample_bilinear):
    """``Upsample(size, scale_factor, mode='bilinear', align_corners=True)`` on ``(N, C, H, W)``."""
