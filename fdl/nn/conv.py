"""Convolution layers: ``Conv1d``, ``Conv2d`` and ``ConvTranspose2d``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fdl import random as _random
from fdl.nn import _functional_layers as _F
from fdl.nn import init as _init
from fdl.nn._base import Layer, Params
from fdl.nn._layer_utils import check_input, check_params_fast, ntuple, split_key

__all__ = ["Conv1d", "Conv2d", "ConvTranspose2d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _ConvBase(Layer):
    """Shared init, validation and padding of the convolution layers (``n`` spatial dims)."""

    _n: int = 2
    _transposed: bool = False

    in_channels: int
    out_channels: int
    kernel_size: Any
    stride: Any
    padding: Any
    dilation: Any
    groups: int
    bias: bool
    padding_mode: str
    device: torch.device | str | None
    dtype: torch.dtype | None

    def _normalise(self) -> None:
        name, n = type(self).__name__, self._n
        if self.groups <= 0:
            raise ValueError(f"{name}: groups must be a positive integer, got {self.groups}")
        if self.in_channels % self.groups != 0:
            raise ValueError(
                f"{name}: in_channels ({self.in_channels}) must be divisible by groups "
                f"({self.groups})"
            )
        if self.out_channels % self.groups != 0:
            raise ValueError(
                f"{name}: out_channels ({self.out_channels}) must be divisible by groups "
                f"({self.groups})"
            )
        for field in ("kernel_size", "stride", "dilation"):
            object.__setattr__(self, field, ntuple(getattr(self, field), n, field, name))
        if isinstance(self.padding, str):
            if self._transposed or self.padding not in ("same", "valid"):
                allowed = (
                    "an int or tuple" if self._transposed else "'same', 'valid', an int or tuple"
                )
                raise ValueError(f"{name}: padding must be {allowed}, got {self.padding!r}")
            if self.padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(
                    f"{name}: padding='same' is not supported for strided convolutions"
                )
        else:
            object.__setattr__(self, "padding", ntuple(self.padding, n, "padding", name))
        allowed_modes = ("zeros",) if self._transposed else _PADDING_MODES
        if self.padding_mode not in allowed_modes:
            raise ValueError(
                f"{name}: padding_mode must be one of {allowed_modes}, got {self.padding_mode!r}"
            )

    def _weight_shape(self) -> tuple[int, ...]:
        if self._transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def init(self, key: _random.Key) -> Params:
        """Draw ``weight`` and ``bias`` from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
        kw, kb = split_key(key)
        shape = self._weight_shape()
        opts: dict[str, Any] = {"dtype": self.dtype, "device": self.device}
        params = {"weight": _init.kaiming_uniform(kw, shape, a=math.sqrt(5), **opts)}
        if self.bias:
            fan_in = _init.fans(shape)[0]
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            params["bias"] = _init.uniform(kb, (self.out_channels,), -bound, bound, **opts)
        return params

    def _check(self, params: Params, x: torch.Tensor) -> None:
        check_params_fast(self, params)
        spatial = ", ".join("HW"[i] if self._n == 2 else "L" for i in range(self._n))
        check_input(
            self,
            x,
            (self._n + 1, self._n + 2),
            f"(N, {self.in_channels}, {spatial}) or ({self.in_channels}, {spatial})",
            -self._n - 1,
            self.in_channels,
        )

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Apply a non-zero padding mode explicitly; return the input and the conv padding."""
        if self.padding_mode == "zeros":
            return x, self.padding
        if self.padding == "valid":
            return x, 0
        pads: list[int] = []
        for d in reversed(range(self._n)):
            if self.padding == "same":
                total = self.dilation[d] * (self.kernel_size[d] - 1)
                pads += [total // 2, total - total // 2]
            else:
                pads += [self.padding[d], self.padding[d]]
        return F.pad(x, pads, mode=self.padding_mode), 0


@dataclass(frozen=True)
class _Conv(_ConvBase):
    """Fields and ``apply`` shared by :class:`Conv1d` and :class:`Conv2d`."""

    in_channels: int
    out_channels: int
    kernel_size: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    padding: int | tuple[int, ...] | str = 0
    dilation: int | tuple[int, ...] = 1
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        self._normalise()

    def apply(
        self,
        params: Params,
        x: torch.Tensor,
        *,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> torch.Tensor:
        """``(N, C_in, *spatial) -> (N, C_out, *spatial_out)``."""
        self._check(params, x)
        x, padding = self._padded(x)
        conv = _F.conv1d if self._n == 1 else _F.conv2d
        return conv(
            x,
            params["weight"],
            params.get("bias"),
            self.stride,
            padding,
            self.dilation,
            self.groups,
        )


@dataclass(frozen=True)
class Conv1d(_Conv):
    r"""1-d convolution (cross-correlation), as ``torch.nn.Conv1d``.

    Params: ``weight`` ``(out_channels, in_channels / groups, kernel_size)`` and
    ``bias`` ``(out_channels,)``, both from :math:`\mathcal{U}(-k, k)` with
    :math:`k = 1/\sqrt{\text{in\_channels}/\text{groups} \cdot \text{kernel\_size}}`.

    Shapes: ``(N, C_in, L_in)`` or ``(C_in, L_in)`` -> ``(N, C_out, L_out)`` with
    ``L_out = floor((L_in + 2 padding - dilation (kernel_size - 1) - 1) / stride + 1)``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: window length.
        stride: step of the window.
        padding: int, 1-tuple, ``"same"`` or ``"valid"``.
        dilation: spacing between kernel elements.
        groups: blocked connections from input to output channels.
        bias: whether to learn an additive bias.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        device: device of the initialised params.
        dtype: dtype of the initialised params.

    Example:
        >>> import fdl, torch
        >>> layer = fdl.nn.Conv1d(2, 4, 3, padding=1)
        >>> layer.apply(layer.init(fdl.random.key(0)), torch.ones(8, 2, 10)).shape
        torch.Size([8, 4, 10])
    """

    _n = 1


@dataclass(frozen=True)
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

    _n = 2


@dataclass(frozen=True)
class ConvTranspose2d(_ConvBase):
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

    _n = 2
    _transposed = True

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

    def __post_init__(self) -> None:
        self._normalise()
        op = ntuple(self.output_padding, 2, "output_padding", "ConvTranspose2d")
        object.__setattr__(self, "output_padding", op)
        stride, dilation = self._tuples()[:2]
        for d in range(2):
            if op[d] >= max(stride[d], dilation[d]):
                raise ValueError(
                    "ConvTranspose2d: output_padding must be smaller than either stride or "
                    f"dilation, got output_padding={op}, stride={self.stride}, "
                    f"dilation={self.dilation}"
                )

    def _tuples(self) -> tuple[tuple[int, ...], ...]:
        """``(stride, dilation, padding, kernel_size, output_padding)``, normalised to tuples."""
        fields = (self.stride, self.dilation, self.padding, self.kernel_size, self.output_padding)
        return tuple(ntuple(f, 2, "size", "ConvTranspose2d") for f in fields)

    def _output_padding(
        self, x: torch.Tensor, output_size: Sequence[int] | None
    ) -> tuple[int, ...]:
        stride, dilation, padding, kernel, output_padding = self._tuples()
        if output_size is None:
            return output_padding
        size = [int(s) for s in output_size]
        if len(size) == x.dim():
            size = size[-2:]
        if len(size) != 2:
            raise ValueError(
                f"ConvTranspose2d: output_size must have 2 or {x.dim()} elements, got {output_size}"
            )
        pads = []
        for d in range(2):
            smallest = (
                (x.shape[d - 2] - 1) * stride[d]
                - 2 * padding[d]
                + dilation[d] * (kernel[d] - 1)
                + 1
            )
            largest = smallest + stride[d] - 1
            if not smallest <= size[d] <= largest:
                raise ValueError(
                    f"ConvTranspose2d: requested output_size {tuple(size)}, but valid sizes for "
                    f"dimension {d} range from {smallest} to {largest} (for an input of "
                    f"{tuple(x.shape[-2:])})"
                )
            pads.append(size[d] - smallest)
        return tuple(pads)

    def apply(
        self,
        params: Params,
        x: torch.Tensor,
        output_size: Sequence[int] | None = None,
        *,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``.

        ``output_size`` (optional) picks ``output_padding`` as torch does.
        """
        self._check(params, x)
        return _F.conv_transpose2d(
            x,
            params["weight"],
            params.get("bias"),
            self.stride,
            self.padding,
            self._output_padding(x, output_size),
            self.groups,
            self.dilation,
        )
