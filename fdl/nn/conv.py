"""Convolution layers: ``Conv1d``, ``Conv2d`` and ``ConvTranspose2d``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from fdl import random as _random
from fdl.nn import _functional_layers as _F
from fdl.nn._base import Layer, OptKey, Params, Tensor, field
from fdl.nn._layer_utils import affine_init, check_input, int_tuple, one_of

__all__ = ["Conv1d", "Conv2d", "ConvTranspose2d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _ConvBase(Layer):
    """Checks, init and padding shared by the convolution layers (``_n`` spatial dims).

    Each concrete class declares its fields itself, in torch's argument order.
    """

    _n: ClassVar[int] = 2
    _transposed: ClassVar[bool] = False

    if TYPE_CHECKING:  # declared by each concrete class
        in_channels: int
        out_channels: int
        kernel_size: tuple[int, ...]
        stride: tuple[int, ...]
        padding: tuple[int, ...] | str
        dilation: tuple[int, ...]
        groups: int
        bias: bool
        padding_mode: str
        device: torch.device | str | None
        dtype: torch.dtype | None

    def _check_fields(self) -> None:
        name = type(self).__name__
        if self.groups <= 0:
            raise ValueError(f"{name}: groups must be a positive integer, got {self.groups}")
        for arg in ("in_channels", "out_channels"):
            if getattr(self, arg) % self.groups != 0:
                raise ValueError(
                    f"{name}: {arg} ({getattr(self, arg)}) must be divisible by groups "
                    f"({self.groups})"
                )
        if self.padding == "same" and any(s != 1 for s in self.stride):
            raise ValueError(f"{name}: padding='same' is not supported for strided convolutions")

    def _weight_shape(self) -> tuple[int, ...]:
        if self._transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def init(self, key: _random.Key) -> Params:
        """Draw ``weight`` and ``bias`` from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
        bias = self.out_channels if self.bias else None
        return affine_init(key, self._weight_shape(), bias, dtype=self.dtype, device=self.device)

    def _check_input(self, x: Tensor) -> None:
        c, spatial = self.in_channels, ("L", "H, W", "D, H, W")[self._n - 1]
        check_input(
            self, x, (self._n + 1, self._n + 2), f"(N, {c}, {spatial}) or ({c}, {spatial})",
            -self._n - 1, c,
        )  # fmt: skip

    def _padded(self, x: Tensor) -> tuple[Tensor, Any]:
        """Apply a non-zero padding mode explicitly; return the input and the conv padding."""
        if self.padding_mode == "zeros":
            return x, self.padding
        if self.padding == "valid":
            return x, 0
        pads: list[int] = []
        for d in reversed(range(self._n)):
            if isinstance(self.padding, str):  # "same"
                total = self.dilation[d] * (self.kernel_size[d] - 1)
                pads += [total // 2, total - total // 2]
            else:
                pads += [self.padding[d], self.padding[d]]
        return F.pad(x, pads, mode=self.padding_mode), 0


class _Conv(_ConvBase):
    """Fields and ``apply`` shared by :class:`Conv1d` and :class:`Conv2d`."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...] = field(converter=int_tuple())
    stride: tuple[int, ...] = field(default=1, converter=int_tuple())
    padding: tuple[int, ...] | str = field(default=0, converter=int_tuple(words=("same", "valid")))
    dilation: tuple[int, ...] = field(default=1, converter=int_tuple())
    groups: int = 1
    bias: bool = True
    padding_mode: str = field(default="zeros", converter=one_of(*_PADDING_MODES))
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None

    def apply(
        self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """``(N, C_in, *spatial) -> (N, C_out, *spatial_out)``."""
        self._check_input(x)
        x, padding = self._padded(x)
        conv = _F.conv1d if self._n == 1 else _F.conv2d
        w, b = params["weight"], params.get("bias")
        return conv(x, w, b, self.stride, padding, self.dilation, self.groups)


class Conv1d(_Conv):
    r"""1-d convolution (cross-correlation), as ``torch.nn.Conv1d``.

    Params: ``weight`` ``(out_channels, in_channels / groups, kernel_size)`` and
    ``bias`` ``(out_channels,)``, both from :math:`\mathcal{U}(-k, k)` with
    :math:`k = 1/\sqrt{\text{in\_channels}/\text{groups} \cdot \text{kernel\_size}}`.

    Shapes: ``(N, C_in, L_in)`` or ``(C_in, L_in)`` -> ``(N, C_out, L_out)`` with
    ``L_out = floor((L_in + 2 padding - dilation (kernel_size - 1) - 1) / stride + 1)``.

    Args:
        Those of :class:`Conv2d`, with ints or 1-tuples for the window arguments
        (``kernel_size``, ``stride``, ``padding``, ``dilation``).

    Example:
        >>> import fdl, torch
        >>> layer = fdl.nn.Conv1d(2, 4, 3, padding=1)
        >>> layer.apply(layer.init(fdl.random.key(0)), torch.ones(8, 2, 10)).shape
        torch.Size([8, 4, 10])
    """

    _n: ClassVar[int] = 1


class Conv2d(_Conv):
    r"""2-d convolution (cross-correlation), as ``torch.nn.Conv2d``.

    Params: ``weight`` ``(out_channels, in_channels / groups, kH, kW)`` and
    ``bias`` ``(out_channels,)``, both from :math:`\mathcal{U}(-k, k)` with
    :math:`k = 1/\sqrt{\text{in\_channels}/\text{groups} \cdot kH \cdot kW}`.

    Shapes: ``(N, C_in, H, W)`` or ``(C_in, H, W)`` -> ``(N, C_out, H_out, W_out)``
    with ``H_out = floor((H + 2 padding[0] - dilation[0] (kH - 1) - 1) / stride[0] + 1)``
    (likewise ``W_out``).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: window size (int or pair).
        stride: step of the window.
        padding: int, pair, ``"same"`` or ``"valid"``.
        dilation: spacing between kernel elements.
        groups: blocked connections from input to output channels.
        bias: whether to learn an additive bias.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        device: device of the initialised params.
        dtype: dtype of the initialised params.

    Example:
        >>> import fdl, torch
        >>> conv1 = fdl.nn.Conv2d(1, 32, 3, stride=1, padding=1)
        >>> params = conv1.init(fdl.random.key(0))
        >>> conv1.apply(params, torch.zeros(64, 1, 28, 28)).shape
        torch.Size([64, 32, 28, 28])
    """

    _n: ClassVar[int] = 2


class _ConvTranspose(_ConvBase):
    """Fields, checks and ``apply`` of the transposed convolutions (``_n`` spatial dims)."""

    _transposed: ClassVar[bool] = True

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...] = field(converter=int_tuple())
    stride: tuple[int, ...] = field(default=1, converter=int_tuple())
    padding: tuple[int, ...] = field(default=0, converter=int_tuple())
    output_padding: tuple[int, ...] = field(default=0, converter=int_tuple())
    groups: int = 1
    bias: bool = True
    dilation: tuple[int, ...] = field(default=1, converter=int_tuple())
    padding_mode: str = field(default="zeros", converter=one_of("zeros"))
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None

    def _check_fields(self) -> None:
        super()._check_fields()
        op, stride, dilation = self.output_padding, self.stride, self.dilation
        if any(op[d] >= max(stride[d], dilation[d]) for d in range(self._n)):
            raise ValueError(
                f"{type(self).__name__}: output_padding must be smaller than either stride or "
                f"dilation, got output_padding={op}, stride={stride}, dilation={dilation}"
            )

    def _output_padding(self, x: Tensor, output_size: Sequence[int] | None) -> tuple[int, ...]:
        if output_size is None:
            return self.output_padding
        name, n = type(self).__name__, self._n
        size = [int(s) for s in output_size]
        if len(size) == x.dim():
            size = size[-n:]
        if len(size) != n:
            raise ValueError(
                f"{name}: output_size must have {n} or {x.dim()} elements, got {output_size}"
            )
        stride, padding, dilation, kernel = (
            self.stride, self.padding, self.dilation, self.kernel_size
        )  # fmt: skip
        pads = []
        for d in range(n):
            smallest = (
                (x.shape[d - n] - 1) * stride[d]
                - 2 * padding[d]
                + dilation[d] * (kernel[d] - 1)
                + 1
            )
            largest = smallest + stride[d] - 1
            if not smallest <= size[d] <= largest:
                raise ValueError(
                    f"{name}: requested output_size {tuple(size)}, but valid sizes for "
                    f"dimension {d} range from {smallest} to {largest} (for an input of "
                    f"{tuple(x.shape[-n:])})"
                )
            pads.append(size[d] - smallest)
        return tuple(pads)

    def _kernel(self) -> Any:
        return _F.conv_transpose2d

    def apply(
        self,
        params: Params,
        x: Tensor,
        output_size: Sequence[int] | None = None,
        *,
        key: OptKey = None,
        train: bool = False,
    ) -> Tensor:
        """``(N, C_in, *spatial) -> (N, C_out, *spatial_out)``.

        ``output_size`` (optional) picks ``output_padding`` as torch does.
        """
        self._check_input(x)
        return self._kernel()(
            x,
            params["weight"],
            params.get("bias"),
            self.stride,
            self.padding,
            self._output_padding(x, output_size),
            self.groups,
            self.dilation,
        )


class ConvTranspose2d(_ConvTranspose):
    r"""Transposed 2-d convolution, as ``torch.nn.ConvTranspose2d``.

    Params: ``weight`` ``(in_channels, out_channels / groups, kH, kW)`` and
    ``bias`` ``(out_channels,)``, both from :math:`\mathcal{U}(-k, k)` with
    :math:`k = 1/\sqrt{\text{out\_channels}/\text{groups} \cdot kH \cdot kW}`
    (torch computes the fan from dimension 1 of the weight).

    Shapes: ``(N, C_in, H, W)`` or ``(C_in, H, W)`` -> ``(N, C_out, H_out, W_out)`` with
    ``H_out = (H - 1) stride[0] - 2 padding[0] + dilation[0] (kH - 1) + output_padding[0] + 1``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: window size (int or pair).
        stride: upsampling step.
        padding: implicit zero padding removed from both sides of the output.
        output_padding: extra size added to one side of the output.
        groups: blocked connections from input to output channels.
        bias: whether to learn an additive bias.
        dilation: spacing between kernel elements.
        padding_mode: only ``"zeros"``.
        device: device of the initialised params.
        dtype: dtype of the initialised params.

    Example:
        >>> import fdl, torch
        >>> up = fdl.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        >>> up.apply(up.init(fdl.random.key(0)), torch.ones(2, 8, 7, 7)).shape
        torch.Size([2, 4, 14, 14])
    """

    _n: ClassVar[int] = 2
