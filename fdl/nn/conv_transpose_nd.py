"""``ConvTranspose1d`` and ``ConvTranspose3d``, as ``torch.nn`` (``ConvTranspose2d`` lives in
:mod:`fdl.nn.conv`).

Params: ``weight`` ``(in_channels, out_channels / groups, *kernel_size)`` and ``bias``
``(out_channels,)`` from ``U(-k, k)``, ``k = 1/sqrt(out_channels / groups * prod(kernel))``
(torch's fan from dimension 1 of the weight). Output size per spatial dimension:
``(L - 1) stride - 2 padding + dilation (k - 1) + output_padding + 1``. The transposed
convolution is torch's kernel.
"""

from __future__ import annotations

from typing import Any, ClassVar

from fdl.nn import _functional_conv_nd as _F
from fdl.nn.conv import _ConvTranspose

__all__ = ["ConvTranspose1d", "ConvTranspose3d"]


class ConvTranspose1d(_ConvTranspose):
    """Transposed 1-d convolution of ``(N, C_in, L)`` / ``(C_in, L)``.

    Example:
        >>> import torch, fdl
        >>> up = fdl.nn.ConvTranspose1d(2, 3, 4, stride=2, padding=1)
        >>> up.apply(up.init(fdl.random.key(0)), torch.zeros(1, 2, 5)).shape
        torch.Size([1, 3, 10])
    """

    _n: ClassVar[int] = 1

    def _kernel(self) -> Any:
        return _F.conv_transpose1d


class ConvTranspose3d(_ConvTranspose):
    """Transposed 3-d convolution of ``(N, C_in, D, H, W)`` / ``(C_in, D, H, W)``.

    Example:
        >>> import torch, fdl
        >>> up = fdl.nn.ConvTranspose3d(2, 3, 2, stride=2)
        >>> up.apply(up.init(fdl.random.key(0)), torch.zeros(1, 2, 2, 3, 4)).shape
        torch.Size([1, 3, 4, 6, 8])
    """

    _n: ClassVar[int] = 3

    def _kernel(self) -> Any:
        return _F.conv_transpose3d
