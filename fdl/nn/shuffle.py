"""``PixelShuffle``, ``PixelUnshuffle`` and ``ChannelShuffle``: rearrangement layers, no params.

Example:
    >>> import torch, fdl
    >>> fdl.nn.PixelShuffle(2).apply({}, torch.zeros(1, 8, 3, 3)).shape
    torch.Size([1, 2, 6, 6])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fdl.nn import _functional_shuffle as _F
from fdl.nn.piecewise_activations import _Pointwise

__all__ = ["ChannelShuffle", "PixelShuffle", "PixelUnshuffle"]


@dataclass(frozen=True)
class PixelShuffle(_Pointwise):
    """``(*, C r², H, W) -> (*, C, H r, W r)``; see :func:`fdl.nn.functional.pixel_shuffle`."""

    upscale_factor: int

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.pixel_shuffle(x, self.upscale_factor)


@dataclass(frozen=True)
class PixelUnshuffle(_Pointwise):
    """``(*, C, H r, W r) -> (*, C r², H, W)``; see :func:`fdl.nn.functional.pixel_unshuffle`."""

    downscale_factor: int

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.pixel_unshuffle(x, self.downscale_factor)


@dataclass(frozen=True)
class ChannelShuffle(_Pointwise):
    """``(N, C, *) -> (N, C, *)`` with the channels of ``groups`` groups interleaved."""

    groups: int

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.channel_shuffle(x, self.groups)
