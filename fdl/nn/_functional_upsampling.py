"""``interpolate`` and the ``upsample*`` aliases.

Resampling is a kernel: fdl calls torch's interpolation kernel
(``torch.nn.functional.interpolate``) with the same arguments, so values and gradients are
torch's by construction. These functions exist so the names live in
:mod:`fdl.nn.functional` and the layers (:mod:`fdl.nn.upsampling`) stay pure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as _torch_F

__all__ = ["interpolate", "upsample", "upsample_bilinear", "upsample_nearest"]

Tensor = torch.Tensor
_Size = int | Sequence[int] | None
_Scale = float | Sequence[float] | None
_MODES = ("nearest", "linear", "bilinear", "bicubic", "trilinear", "area", "nearest-exact")


def interpolate(
    input: Tensor,
    size: _Size = None,
    scale_factor: _Scale = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    recompute_scale_factor: bool | None = None,
    antialias: bool = False,
) -> Tensor:
    """Resample the spatial dimensions of ``(N, C, *spatial)`` to ``size`` or by ``scale_factor``.

    Args:
        input: ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        size: the output spatial size.
        scale_factor: multiplier of the spatial size (exactly one of ``size`` and
            ``scale_factor``).
        mode: ``'nearest'`` | ``'linear'`` | ``'bilinear'`` | ``'bicubic'`` | ``'trilinear'``
            | ``'area'`` | ``'nearest-exact'``.
        align_corners: for the linear and cubic modes, map corner pixel centres onto each
            other.
        recompute_scale_factor: compute the scale used from the output size.
        antialias: anti-aliasing for downsampling (bilinear, bicubic).

    Returns:
        The resampled tensor.

    Example:
        >>> import torch
        >>> interpolate(torch.tensor([[[1.0, 2.0]]]), scale_factor=2).tolist()
        [[[1.0, 1.0, 2.0, 2.0]]]
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"interpolate: input must be a torch.Tensor, got {type(input).__name__}")
    if mode not in _MODES:
        raise ValueError(f"interpolate: mode must be one of {', '.join(map(repr, _MODES))}")
    return _torch_F.interpolate(
        input, size, scale_factor, mode, align_corners, recompute_scale_factor, antialias
    )


def upsample(
    input: Tensor,
    size: _Size = None,
    scale_factor: _Scale = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
) -> Tensor:
    """:func:`interpolate` under torch's older name."""
    return interpolate(input, size, scale_factor, mode, align_corners)


def upsample_nearest(input: Tensor, size: _Size = None, scale_factor: _Scale = None) -> Tensor:
    """:func:`interpolate` with ``mode='nearest'``."""
    return interpolate(input, size, scale_factor, mode="nearest")


def upsample_bilinear(input: Tensor, size: _Size = None, scale_factor: _Scale = None) -> Tensor:
    """:func:`interpolate` with ``mode='bilinear', align_corners=True``."""
    return interpolate(input, size, scale_factor, mode="bilinear", align_corners=True)
