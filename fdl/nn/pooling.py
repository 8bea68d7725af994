"""Pooling layers: ``MaxPool1d/2d``, ``AvgPool1d/2d`` and ``AdaptiveAvgPool2d`` (no params)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fdl import random as _random
from fdl.nn import _functional_layers as _F
from fdl.nn._base import Layer, Params
from fdl.nn._layer_utils import check_input, check_params_fast, ntuple

__all__ = ["AdaptiveAvgPool2d", "AvgPool1d", "AvgPool2d", "MaxPool1d", "MaxPool2d"]

_Size = int | tuple[int, ...]


class _PoolBase(Layer):
    _n: int = 2
    _max: bool = True

    kernel_size: Any
    stride: Any
    padding: Any

    def _normalise(self) -> None:
        name, n = type(self).__name__, self._n
        if self.stride is None:
            object.__setattr__(self, "stride", self.kernel_size)
        k = ntuple(self.kernel_size, n, "kernel_size", name)
        ntuple(self.stride, n, "stride", name)
        pad = ntuple(self.padding, n, "padding", name)
        dil = ntuple(getattr(self, "dilation", 1), n, "dilation", name)
        for d in range(n):
            effective = (k[d] - 1) * dil[d] + 1 if self._max else k[d]
            if not 0 <= 2 * pad[d] <= effective:
                raise ValueError(
                    f"{name}: padding should be at most half of the kernel size, got "
                    f"padding={self.padding}, kernel_size={self.kernel_size}"
                )

    def _check(self, params: Params, x: torch.Tensor) -> None:
        check_params_fast(self, params)
        spatial = "L" if self._n == 1 else "H, W"
        check_input(self, x, (self._n + 1, self._n + 2), f"(N, C, {spatial}) or (C, {spatial})")


@dataclass(frozen=True)
class _MaxPool(_PoolBase):
    """Fields, validation and ``apply`` shared by :class:`MaxPool1d` and :class:`MaxPool2d`."""

    kernel_size: _Size
    stride: _Size | None = None
    padding: _Size = 0
    dilation: _Size = 1
    return_indices: bool = False
    ceil_mode: bool = False

    def __post_init__(self) -> None:
        self._normalise()

    def apply(
        self,
        params: Params,
        x: torch.Tensor,
        *,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> Any:
        """``(N, C, *spatial) -> (N, C, *spatial_out)``, or ``(values, indices)``."""
        self._check(params, x)
        pool = _F.max_pool1d if self._n == 1 else _F.max_pool2d
        return pool(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            self.return_indices,
        )


@dataclass(frozen=True)
class MaxPool1d(_MaxPool):
    """Max over windows of ``(N, C, L)``, as ``torch.nn.MaxPool1d``.

    ``L_out = floor((L + 2 padding - dilation (kernel_size - 1) - 1) / stride + 1)``
    (``ceil`` with ``ceil_mode``). With ``return_indices`` ``apply`` returns
    ``(values, indices)``.

    Args:
        The constructor arguments of ``torch.nn.MaxPool1d``, with its defaults
        (``stride=None`` means ``kernel_size``); see
        :func:`fdl.nn.functional.max_pool1d` for each.

    Example:
        >>> import fdl, torch
        >>> fdl.nn.MaxPool1d(2).apply({}, torch.arange(6.0).reshape(1, 1, 6))
        tensor([[[1., 3., 5.]]])
    """

    _n = 1


@dataclass(frozen=True)
class MaxPool2d(_MaxPool):
    """Max over windows of ``(N, C, H, W)``, as ``torch.nn.MaxPool2d``.

    ``H_out = floor((H + 2 padding[0] - dilation[0] (kH - 1) - 1) / stride[0] + 1)``
    (likewise ``W_out``; ``ceil`` with ``ceil_mode``). With ``return_indices``
    ``apply`` returns ``(values, indices)``.

    Args:
        The constructor arguments of ``torch.nn.MaxPool2d``, with its defaults
        (``stride=None`` means ``kernel_size``); see
        :func:`fdl.nn.functional.max_pool2d` for each.

    Example:
        >>> import fdl, torch
        >>> fdl.nn.MaxPool2d(2).apply({}, torch.zeros(64, 32, 28, 28)).shape
        torch.Size([64, 32, 14, 14])
    """

    _n = 2


@dataclass(frozen=True)
class AvgPool1d(_PoolBase):
    """Mean over windows of ``(N, C, L)``, as ``torch.nn.AvgPool1d``.

    ``L_out = floor((L + 2 padding - kernel_size) / stride + 1)``; with
    ``count_include_pad`` the padded zeros count in the mean's divisor.

    Args:
        The constructor arguments of ``torch.nn.AvgPool1d``, with its defaults
        (``stride=None`` means ``kernel_size``); see
        :func:`fdl.nn.functional.avg_pool1d` for each.

    Example:
        >>> import fdl, torch
        >>> fdl.nn.AvgPool1d(2).apply({}, torch.arange(4.0).reshape(1, 1, 4))
        tensor([[[0.5000, 2.5000]]])
    """

    _n = 1
    _max = False

    kernel_size: _Size
    stride: _Size | None = None
    padding: _Size = 0
    ceil_mode: bool = False
    count_include_pad: bool = True

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
        """``(N, C, L) -> (N, C, L_out)``."""
        self._check(params, x)
        return _F.avg_pool1d(
            x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )


@dataclass(frozen=True)
class AvgPool2d(_PoolBase):
    """Mean over windows of ``(N, C, H, W)``, as ``torch.nn.AvgPool2d``.

    ``H_out = floor((H + 2 padding[0] - kH) / stride[0] + 1)``; the divisor is the
    window size (``count_include_pad``), the count of unpadded elements, or
    ``divisor_override``.

    Args:
        The constructor arguments of ``torch.nn.AvgPool2d``, with its defaults
        (``stride=None`` means ``kernel_size``); see
        :func:`fdl.nn.functional.avg_pool2d` for each.

    Example:
        >>> import fdl, torch
        >>> fdl.nn.AvgPool2d(2).apply({}, torch.ones(1, 3, 4, 4)).shape
        torch.Size([1, 3, 2, 2])
    """

    _n = 2
    _max = False

    kernel_size: _Size
    stride: _Size | None = None
    padding: _Size = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None

    def __post_init__(self) -> None:
        self._normalise()
        if self.divisor_override is not None and self.divisor_override == 0:
            raise ValueError("AvgPool2d: divisor_override must be non-zero")

    def apply(
        self,
        params: Params,
        x: torch.Tensor,
        *,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H_out, W_out)``."""
        self._check(params, x)
        return _F.avg_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


@dataclass(frozen=True)
class AdaptiveAvgPool2d(Layer):
    """Mean pooling of ``(N, C, H, W)`` to ``output_size``, as ``torch.nn.AdaptiveAvgPool2d``.

    Output cell ``i`` averages input rows ``floor(i H / H_out)`` to
    ``ceil((i + 1) H / H_out) - 1`` (likewise columns); ``None`` in
    ``output_size`` keeps that input size.

    Example:
        >>> import fdl, torch
        >>> fdl.nn.AdaptiveAvgPool2d((1, 1)).apply({}, torch.ones(2, 3, 7, 5)).shape
        torch.Size([2, 3, 1, 1])
    """

    output_size: int | tuple[int | None, int | None]

    def __post_init__(self) -> None:
        size = self.output_size
        seq = (size,) if isinstance(size, int) else tuple(size)
        if len(seq) not in (1, 2) or not all(
            s is None or (isinstance(s, int) and s >= 0) for s in seq
        ):
            raise TypeError(
                "AdaptiveAvgPool2d: output_size must be an int or a pair of ints/None, "
                f"got {size!r}"
            )
        if not isinstance(size, int):
            object.__setattr__(self, "output_size", seq)

    def apply(
        self,
        params: Params,
        x: torch.Tensor,
        *,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, *output_size)``."""
        check_params_fast(self, params)
        check_input(self, x, (3, 4), "(N, C, H, W) or (C, H, W)")
        return _F.adaptive_avg_pool2d(x, self.output_size)
