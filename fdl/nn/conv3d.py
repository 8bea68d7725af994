"""``Conv3d``: 3-d convolution (cross-correlation), as ``torch.nn.Conv3d``.

Shares fdl's convolution fields, initialisation and validation (``weight`` ``(C_out,
C_in / groups, kD, kH, kW)`` and ``bias`` from ``U(-k, k)``, ``k = 1/sqrt(fan_in)``); the
convolution itself is torch's ``conv3d`` kernel.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as _torch_F

from fdl.nn.conv import _Conv

__all__ = ["Conv3d"]


class Conv3d(_Conv):
    """3-d convolution of ``(N, C_in, D, H, W)`` or ``(C_in, D, H, W)``.

    Args: as :class:`fdl.nn.Conv2d` with 3-tuples (``padding`` also ``'same'``/``'valid'``;
    ``padding_mode`` ``'zeros'``/``'reflect'``/``'replicate'``/``'circular'``).

    Example:
        >>> import torch, fdl
        >>> conv = fdl.nn.Conv3d(2, 4, 3, padding=1)
        >>> conv.apply(conv.init(fdl.random.key(0)), torch.zeros(1, 2, 4, 4, 4)).shape
        torch.Size([1, 4, 4, 4, 4])
    """

    _n = 3

    def apply(
        self, params: Any, x: torch.Tensor, *, key: Any = None, train: bool = False
    ) -> torch.Tensor:
        """``(N, C_in, D, H, W) -> (N, C_out, D_out, H_out, W_out)``."""
        self._check_input(x)
        x, padding = self._padded(x)
        return _torch_F.conv3d(
            x,
            params["weight"],
            params.get("bias"),
            self.stride,
            padding,
            self.dilation,
            self.groups,
        )
