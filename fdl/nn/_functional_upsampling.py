"""``interpolate``, the ``upsample*`` aliases, ``grid_sample`` and ``affine_grid``.

Resampling is a kernel: fdl calls torch's interpolation kernel
(``torch.nn.functional.interpolate``) with the same arguments, so values and gradients are
torch's by construction. These functions exist so the names live in
:mod:`fdl.nn.functional` and the layers (:mod:`fdl.nn.upsampling`) stay pure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as _torch_F

__all__ = [
    "affine_grid",
    "grid_sample",
    "interpolate",
    "upsample",
    "upsample_bilinear",
    "upsample_nearest",
]

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


def grid_sample(
    input: Tensor,
    grid: Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool | None = None,
) -> Tensor:
    """Sample ``input`` at the normalised ``grid`` locations (torch's resampling kernel).

    Args:
        input: ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        grid: ``(N, H_out, W_out, 2)`` or ``(N, D_out, H_out, W_out, 3)`` in ``[-1, 1]``.
        mode: ``'bilinear'`` | ``'nearest'`` | ``'bicubic'``.
        padding_mode: ``'zeros'`` | ``'border'`` | ``'reflection'``.
        align_corners: whether ``-1`` and ``1`` are the corner pixels' centres.

    Returns:
        ``(N, C, H_out, W_out)`` (or the 3-d analogue).
    """
    return _torch_F.grid_sample(input, grid, mode, padding_mode, align_corners)


def _base_coords(n: int, align_corners: bool, like: Tensor) -> Tensor:
    """``n`` normalised pixel-centre coordinates in ``[-1, 1]`` (a single pixel sits at 0)."""
    if n <= 1:
        return torch.zeros(n, dtype=like.dtype, device=like.device)
    c = torch.linspace(-1.0, 1.0, n, dtype=like.dtype, device=like.device)
    return c if align_corners else c * ((n - 1) / n)


def affine_grid(theta: Tensor, size: Sequence[int], align_corners: bool | None = None) -> Tensor:
    """Sampling grid of an affine map: ``grid[n, ..., :] = theta[n] @ (x, y[, z], 1)``.

    The base coordinates of each spatial dimension of size ``s`` are ``linspace(-1, 1, s)``,
    scaled by ``(s - 1) / s`` unless ``align_corners`` (default ``False``).

    Args:
        theta: ``(N, 2, 3)`` (2-d) or ``(N, 3, 4)`` (3-d) affine matrices.
        size: the output size ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        align_corners: as in :func:`grid_sample`.

    Returns:
        ``(N, H, W, 2)`` or ``(N, D, H, W, 3)``.

    Example:
        >>> import torch
        >>> eye = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
        >>> affine_grid(eye, (1, 1, 1, 2), align_corners=True)[0, 0]
        tensor([[-1.,  0.],
                [ 1.,  0.]])
    """
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point():
        raise TypeError("affine_grid: theta must be a floating tensor")
    ac = bool(align_corners)
    spatial = [int(s) for s in size[2:]]
    k = len(spatial)
    if k not in (2, 3) or theta.shape[1:] != (k, k + 1) or theta.shape[0] != size[0]:
        raise ValueError(
            f"affine_grid: theta {tuple(theta.shape)} does not fit size {tuple(size)} "
            "(expected (N, 2, 3) for 4-d sizes, (N, 3, 4) for 5-d)"
        )
    coords = [_base_coords(s, ac, theta) for s in reversed(spatial)]  # x (width) first
    mesh = torch.meshgrid(*reversed(coords), indexing="ij")  # each (*spatial)
    ones = torch.ones(spatial, dtype=theta.dtype, device=theta.device)
    base = torch.stack([*reversed(mesh), ones], -1)  # (*spatial, k + 1): (x, y[, z], 1)
    grid = base.reshape(1, -1, k + 1) @ theta.transpose(1, 2)  # (N, prod(spatial), k)
    return grid.reshape(theta.shape[0], *spatial, k)
