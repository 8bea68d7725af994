"""``PixelShuffle``, ``PixelUnshuffle`` and ``ChannelShuffle``: rearrangement layers, no params.

Example:
    >>> import torch, fdl
    >>> fdl.nn.PixelShuffle(2).apply({}, torch.zeros(1, 8, 3, 3)).shape
    torch.Size([1, 2, 6, 6])
"""

from __future__ import annotations

from fdl.nn import _functional_shuffle as _F
from fdl.nn._fn_layer import _FnLayer

__all__ = ["ChannelShuffle", "PixelShuffle", "PixelUnshuffle"]


class PixelShuffle(_FnLayer, fn=_F.pixel_shuffle):
    """``(*, C r², H, W) -> (*, C, H r, W r)``; see :func:`fdl.nn.functional.pixel_shuffle`."""

    upscale_factor: int


class PixelUnshuffle(_FnLayer, fn=_F.pixel_unshuffle):
    """``(*, C, H r, W r) -> (*, C r², H, W)``; see :func:`fdl.nn.functional.pixel_unshuffle`."""

    downscale_factor: int


class ChannelShuffle(_FnLayer, fn=_F.channel_shuffle):
    """``(N, C, *) -> (N, C, *)`` with the channels of ``groups`` groups interleaved."""

    groups: int
