"""Pooling layers: ``MaxPool1d/2d``, ``AvgPool1d/2d`` and ``AdaptiveAvgPool2d`` (no params)."""

from __future__ import annotations

from typing import Any, ClassVar

from fdl.nn import _functional_layers as _F
from fdl.nn._base import Layer, OptKey, Params, Tensor, field
from fdl.nn._fn_layer import _FnLayer
from fdl.nn._layer_utils import check_input, int_tuple

__all__ = ["AdaptiveAvgPool2d", "AvgPool1d", "AvgPool2d", "MaxPool1d", "MaxPool2d"]

_Size = tuple[int, ...]


class _Pool(_FnLayer):
    """The window fields, checks and ``apply`` shared by the pooling layers (``_n`` spatial dims).

    ``stride=None`` (the default) becomes ``kernel_size``; every window argument is
    stored as a tuple of ``_n`` ints. ``apply`` checks the input's rank, then calls ``fn``
    (a class keyword) with the fields by name.
    """

    _n: ClassVar[int] = 2

    kernel_size: _Size = field(converter=int_tuple())
    stride: _Size = field(default=None, converter=int_tuple(none_from="kernel_size"))
    padding: _Size = field(default=0, converter=int_tuple())

    def _check_fields(self) -> None:
        dilation = getattr(self, "dilation", (1,) * self._n)
        for k, p, d in zip(self.kernel_size, self.padding, dilation, strict=True):
            if not 0 <= 2 * p <= (k - 1) * d + 1:
                raise ValueError(
                    f"{type(self).__name__}: padding should be at most half of the kernel size, "
                    f"got padding={self.padding}, kernel_size={self.kernel_size}"
                )

    def apply(self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False) -> Any:
        """``(N, C, *spatial) -> (N, C, *spatial_out)``; max pools with ``return_indices``
        return ``(values, indices)``."""
        spatial = "L" if self._n == 1 else "H, W"
        check_input(self, x, (self._n + 1, self._n + 2), f"(N, C, {spatial}) or (C, {spatial})")
        return self._forward(x)


class _MaxPool(_Pool):
    """Fields shared by :class:`MaxPool1d` and :class:`MaxPool2d`."""

    dilation: _Size = field(default=1, converter=int_tuple())
    return_indices: bool = False
    ceil_mode: bool = False


class _AvgPool(_Pool):
    """Fields shared by :class:`AvgPool1d` and :class:`AvgPool2d`."""

    ceil_mode: bool = False
    count_include_pad: bool = True


class MaxPool1d(_MaxPool, fn=_F.max_pool1d):
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

    _n: ClassVar[int] = 1


class MaxPool2d(_MaxPool, fn=_F.max_pool2d):
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

    _n: ClassVar[int] = 2


class AvgPool1d(_AvgPool, fn=_F.avg_pool1d):
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

    _n: ClassVar[int] = 1


class AvgPool2d(_AvgPool, fn=_F.avg_pool2d):
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

    _n: ClassVar[int] = 2

    divisor_override: int | None = None

    def _check_fields(self) -> None:
        super()._check_fields()
        if self.divisor_override is not None and self.divisor_override == 0:
            raise ValueError("AvgPool2d: divisor_override must be non-zero")


def _output_size(value: Any, layer: Layer) -> Any:
    seq = (value,) if isinstance(value, int) else tuple(value)
    if len(seq) not in (1, 2) or not all(s is None or (isinstance(s, int) and s >= 0) for s in seq):
        raise TypeError(f"must be an int or a pair of ints/None, got {value!r}")
    return value if isinstance(value, int) else seq


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

    output_size: int | tuple[int | None, int | None] = field(converter=_output_size)

    def apply(
        self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """``(N, C, H, W) -> (N, C, *output_size)``."""
        check_input(self, x, (3, 4), "(N, C, H, W) or (C, H, W)")
        return _F.adaptive_avg_pool2d(x, self.output_size)
