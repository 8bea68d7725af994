"""Padding layers: ``ZeroPad``, ``ConstantPad``, ``ReflectionPad``, ``ReplicationPad`` and
``CircularPad`` in 1, 2 and 3 dimensions, as ``torch.nn``.

``padding`` is an int (every side) or a tuple of ``2 * d`` ints in ``F.pad``'s order
(``(left, right)``, ``(left, right, top, bottom)``, ``(left, right, top, bottom, front,
back)``). Each ``apply`` calls :func:`fdl.nn.functional.pad`. No parameters.

Example:
    >>> import torch, fdl
    >>> fdl.nn.ZeroPad1d((1, 2)).apply({}, torch.ones(1, 1, 2))
    tensor([[[0., 1., 1., 0., 0.]]])
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fdl.nn import _functional_padding as _F
from fdl.nn._base import Layer, Params
from fdl.nn._layer_utils import check_params_fast

__all__ = [
    "CircularPad1d",
    "CircularPad2d",
    "CircularPad3d",
    "ConstantPad1d",
    "ConstantPad2d",
    "ConstantPad3d",
    "ReflectionPad1d",
    "ReflectionPad2d",
    "ReflectionPad3d",
    "ReplicationPad1d",
    "ReplicationPad2d",
    "ReplicationPad3d",
    "ZeroPad1d",
    "ZeroPad2d",
    "ZeroPad3d",
]


class _Pad(Layer):
    """Shared ``apply``: ``pad(x, padding, mode, value)``, with torch's rank check.

    ``dims`` (the padded trailing dimensions) and ``mode`` are class keywords.
    """

    dims: ClassVar[int]
    mode: ClassVar[str]
    padding: Any

    def __init_subclass__(
        cls, dims: int | None = None, mode: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if dims is not None:
            cls.dims = dims
        if mode is not None:
            cls.mode = mode

    def _pads(self) -> tuple[int, ...]:
        p = self.padding
        if isinstance(p, int) and not isinstance(p, bool):
            return (p,) * (2 * self.dims)
        if isinstance(p, (tuple, list)) and len(p) == 2 * self.dims:
            if all(isinstance(v, int) and not isinstance(v, bool) for v in p):
                return tuple(p)
        raise TypeError(
            f"{type(self).__name__}: padding must be an int or a tuple of {2 * self.dims} ints, "
            f"got {p!r}"
        )

    def _check_fields(self) -> None:
        self._pads()

    def param_shapes(self) -> Params:
        """``{}``: no parameters."""
        return {}

    def apply(
        self, params: Params, x: torch.Tensor, *, key: Any = None, train: bool = False
    ) -> torch.Tensor:
        """``(N, C, *spatial)`` or ``(C, *spatial)`` -> the padded tensor."""
        check_params_fast(self, params)
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}: input must be a tensor, got {type(x).__name__}")
        if x.dim() not in (self.dims + 1, self.dims + 2):
            raise ValueError(
                f"{name}: expected a {self.dims + 1}-d or {self.dims + 2}-d input, "
                f"got {tuple(x.shape)}"
            )
        value = getattr(self, "value", None)  # ConstantPad's fill; None (zeros) for the others
        return _F.pad(x, self._pads(), self.mode, value)


class _Pad1d(_Pad, dims=1):
    padding: int | tuple[int, int]


class _Pad2d(_Pad, dims=2):
    padding: int | tuple[int, int, int, int]


class _Pad3d(_Pad, dims=3):
    padding: int | tuple[int, int, int, int, int, int]


class ConstantPad1d(_Pad1d, mode="constant"):
    """Pad the last dimension with ``value``; ``padding`` int or ``(left, right)``."""

    value: float


class ConstantPad2d(_Pad2d, mode="constant"):
    """Pad the last 2 dimensions with ``value``; ``(left, right, top, bottom)``."""

    value: float


class ConstantPad3d(_Pad3d, mode="constant"):
    """Pad the last 3 dimensions with ``value``; ``(left, right, top, bottom, front, back)``."""

    value: float


class ZeroPad1d(_Pad1d, mode="constant"):
    """Pad the last dimension with zeros."""


class ZeroPad2d(_Pad2d, mode="constant"):
    """Pad the last 2 dimensions with zeros."""


class ZeroPad3d(_Pad3d, mode="constant"):
    """Pad the last 3 dimensions with zeros."""


class ReflectionPad1d(_Pad1d, mode="reflect"):
    """Reflect at the edges of the last dimension (edge not repeated; pads < size)."""


class ReflectionPad2d(_Pad2d, mode="reflect"):
    """Reflect at the edges of the last 2 dimensions."""


class ReflectionPad3d(_Pad3d, mode="reflect"):
    """Reflect at the edges of the last 3 dimensions."""


class ReplicationPad1d(_Pad1d, mode="replicate"):
    """Repeat the edge values of the last dimension."""


class ReplicationPad2d(_Pad2d, mode="replicate"):
    """Repeat the edge values of the last 2 dimensions."""


class ReplicationPad3d(_Pad3d, mode="replicate"):
    """Repeat the edge values of the last 3 dimensions."""


class CircularPad1d(_Pad1d, mode="circular"):
    """Wrap the last dimension around (pads <= size)."""


class CircularPad2d(_Pad2d, mode="circular"):
    """Wrap the last 2 dimensions around."""


class CircularPad3d(_Pad3d, mode="circular"):
    """Wrap the last 3 dimensions around."""
