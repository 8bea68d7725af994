"""Channel/space rearrangements: ``pixel_shuffle``, ``pixel_unshuffle``, ``channel_shuffle``.

Pure data movement written as reshape and permute (shape comments on each line).
"""

from __future__ import annotations

import torch

__all__ = ["channel_shuffle", "native_channel_shuffle", "pixel_shuffle", "pixel_unshuffle"]

Tensor = torch.Tensor


def _check(name: str, input: object, min_dim: int) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() < min_dim:
        raise ValueError(f"{name}: expected at least {min_dim} dimensions, got {input.dim()}")


def pixel_shuffle(input: Tensor, upscale_factor: int) -> Tensor:
    """``(*, C * r**2, H, W) -> (*, C, H * r, W * r)``.

    ``y[c, h r + i, w r + j] = x[c r² + i r + j, h, w]``.

    Example:
        >>> import torch
        >>> pixel_shuffle(torch.arange(4.0).reshape(1, 4, 1, 1), 2)
        tensor([[[[0., 1.],
                  [2., 3.]]]])
    """
    _check("pixel_shuffle", input, 3)
    r = upscale_factor
    *batch, c, h, w = input.shape
    if r <= 0 or c % (r * r):
        raise ValueError(
            f"pixel_shuffle: channels ({c}) must be divisible by upscale_factor**2 ({r * r})"
        )
    oc = c // (r * r)
    x = input.reshape(*batch, oc, r, r, h, w)  # (*, C, r_i, r_j, H, W)
    nb = len(batch)
    x = x.permute(*range(nb), nb, nb + 3, nb + 1, nb + 4, nb + 2)  # (*, C, H, r_i, W, r_j)
    return x.reshape(*batch, oc, h * r, w * r)  # (*, C, H r, W r)


def pixel_unshuffle(input: Tensor, downscale_factor: int) -> Tensor:
    """``(*, C, H * r, W * r) -> (*, C * r**2, H, W)``, the inverse of :func:`pixel_shuffle`.

    Example:
        >>> import torch
        >>> pixel_unshuffle(torch.arange(4.0).reshape(1, 1, 2, 2), 2).flatten().tolist()
        [0.0, 1.0, 2.0, 3.0]
    """
    _check("pixel_unshuffle", input, 3)
    r = downscale_factor
    *batch, c, hr, wr = input.shape
    if r <= 0 or hr % r or wr % r:
        raise ValueError(
            f"pixel_unshuffle: height ({hr}) and width ({wr}) must be divisible by "
            f"downscale_factor ({r})"
        )
    h, w = hr // r, wr // r
    x = input.reshape(*batch, c, h, r, w, r)  # (*, C, H, r_i, W, r_j)
    nb = len(batch)
    x = x.permute(*range(nb), nb, nb + 2, nb + 4, nb + 1, nb + 3)  # (*, C, r_i, r_j, H, W)
    return x.reshape(*batch, c * r * r, h, w)  # (*, C r², H, W)


def channel_shuffle(input: Tensor, groups: int) -> Tensor:
    """``(N, C, *) -> (N, C, *)``: channel ``g * (C / groups) + k`` moves to ``k * groups + g``.

    Example:
        >>> import torch
        >>> channel_shuffle(torch.arange(4.0).reshape(1, 4, 1), 2).flatten().tolist()
        [0.0, 2.0, 1.0, 3.0]
    """
    _check("channel_shuffle", input, 3)
    n, c, *rest = input.shape
    if groups <= 0 or c % groups:
        raise ValueError(f"channel_shuffle: channels ({c}) must be divisible by groups ({groups})")
    x = input.reshape(n, groups, c // groups, *rest)  # (N, g, C/g, *)
    x = x.transpose(1, 2)  # (N, C/g, g, *)
    return x.reshape(n, c, *rest)  # (N, C, *)


native_channel_shuffle = channel_shuffle
