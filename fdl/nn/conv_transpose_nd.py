"""``ConvTranspose1d`` and ``ConvTranspose3d``, as ``torch.nn`` (``ConvTranspose2d`` lives in
:mod:`fdl.nn.conv`).

Params: ``weight`` ``(in_channels, out_channels / groups, *kernel_size)`` and ``bias``
``(out_channels,)`` from ``U(-k, k)``, ``k = 1/sqrt(out_channels / groups * prod(kernel))``
(torch's fan from dimension 1 of the weight). Output size per spatial dimension:
``(L - 1) stride - 2 padding + dilation (k - 1) + output_padding + 1``. The transposed
convolution is torch's kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as _torch_F

from fdl.nn._layer_utils import ntuple
from fdl.nn.conv import _ConvBase

__all__ = ["ConvTranspose1d", "ConvTranspose3d"]


class _ConvTransposeND(_ConvBase):
    _transposed = True
    output_padding: Any

    def __post_init__(self) -> None:
        name, n = type(self).__name__, self._n
        self._normalise()
        op = ntuple(self.output_padding, n, "output_padding", name)
        object.__setattr__(self, "output_padding", op)
        for d in range(n):
            if op[d] >= max(self.stride[d], self.dilation[d]):
                raise ValueError(
                    f"{name}: output_padding must be smaller than either stride or dilation, "
                    f"got output_padding={op}, stride={self.stride}, dilation={self.dilation}"
                )

    def _output_padding(self, x: torch.Tensor, output_size: Sequence[int] | None) -> tuple:
        name, n = type(self).__name__, self._n
        if output_size is None:
            return self.output_padding
        size = (
            [int(s) for s in output_size][-n:] if len(output_size) == x.dim() else list(output_size)
        )
        if len(size) != n:
            raise ValueError(f"{name}: output_size must have {n} or {x.dim()} elements")
        pads = []
        for d in range(n):
            smallest = (
                (x.shape[d - n] - 1) * self.stride[d]
                - 2 * self.padding[d]
                + self.dilation[d] * (self.kernel_size[d] - 1)
                + 1
            )
            largest = smallest + self.stride[d] - 1
            if not smallest <= size[d] <= largest:
                raise ValueError(
                    f"{name}: requested output_size {tuple(size)}, but valid sizes for dimension "
                    f"{d} range from {smallest} to {largest}"
                )
            pads.append(size[d] - smallest)
        return tuple(pads)

    def apply(
        self,
        params: Any,
        x: torch.Tensor,
        output_size: Sequence[int] | None = None,
        *,
        key: Any = None,
        train: bool = False,
    ) -> torch.Tensor:
        """``(N, C_in, *spatial) -> (N, C_out, *spatial_out)``; ``output_size`` picks
        ``output_padding`` as torch does."""
        self._check(params, x)
        conv = _torch_F.conv_transpose1d if self._n == 1 else _torch_F.conv_transpose3d
        return conv(
            x,
            params["weight"],
            params.get("bias"),
            self.stride,
            self.padding,
            self._output_padding(x, output_size),
            self.groups,
            self.dilation,
        )


@dataclass(frozen=True)
class ConvTranspose1d(_ConvTransposeND):
    """Transposed 1-d convolution of ``(N, C_in, L)`` / ``(C_in, L)``.

    Example:
        >>> import torch, fdl
        >>> up = fdl.nn.ConvTranspose1d(2, 3, 4, stride=2, padding=1)
        >>> up.apply(up.init(fdl.random.key(0)), torch.zeros(1, 2, 5)).shape
        torch.Size([1, 3, 10])
    """

    _n = 1
    in_channels: int
    out_channels: int
    kernel_size: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: int | tuple[int, ...] = 0
    output_padding: int | tuple[int, ...] = 0
    groups: int = 1
    bias: bool = True
    dilation: int | tuple[int, ...] = 1
    padding_mode: str = "zeros"
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None


@dataclass(frozen=True)
class ConvTranspose3d(_ConvTransposeND):
    """Transposed 3-d convolution of ``(N, C_in, D, H, W)`` / ``(C_in, D, H, W)``.

    Example:
        >>> import torch, fdl
        >>> up = fdl.nn.ConvTranspose3d(2, 3, 2, stride=2)
        >>> up.apply(up.init(fdl.random.key(0)), torch.zeros(1, 2, 2, 3, 4)).shape
        torch.Size([1, 3, 4, 6, 8])
    """

    _n = 3
    in_channels: int
    out_channels: int
    kernel_size: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: int | tuple[int, ...] = 0
    output_padding: int | tuple[int, ...] = 0
    groups: int = 1
    bias: bool = True
    dilation: int | tuple[int, ...] = 1
    padding_mode: str = "zeros"
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
