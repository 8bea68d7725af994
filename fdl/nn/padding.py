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

from dataclasses import dataclass
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
    """Shared ``apply``: ``pad(x, padding, mode, value)``, with torch's rank check."""

    dims: ClassVar[int]
    mode: ClassVar[str]
    padding: Any

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

    def __post_init__(self) -> None:
        self._pads()

    def _value(self) -> float | None:
        return None

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
        return _F.pad(x, self._pads(), self.mode, self._value())


class _ConstantPad(_Pad):
    mode = "constant"
    value: float

    def _value(self) -> float | None:
        return self.value


@dataclass(frozen=True)
class ConstantPad1d(_ConstantPad):
    """Pad the last dimension with ``value``; ``padding`` int or ``(left, right)``."""

    padding: int | tuple[int, int]
    value: float
    dims = 1


@dataclass(frozen=True)
class ConstantPad2d(_ConstantPad):
    """Pad the last 2 dimensions with ``value``; ``(left, right, top, bottom)``."""

    padding: int | tuple[int, int, int, int]
    value: float
    dims = 2


@dataclass(frozen=True)
class ConstantPad3d(_ConstantPad):
    """Pad the last 3 dimensions with ``value``; ``(left, right, top, bottom, front, back)``."""

    padding: int | tuple[int, int, int, int, int, int]
    value: float
    dims = 3


class _ZeroPad(_Pad):
    mode = "constant"


@dataclass(frozen=True)
class ZeroPad1d(_ZeroPad):
    """Pad the last dimension with zeros."""

    padding: int | tuple[int, int]
    dims = 1


@dataclass(frozen=True)
class ZeroPad2d(_ZeroPad):
    """Pad the last 2 dimensions with zeros."""

    padding: int | tuple[int, int, int, int]
    dims = 2


@dataclass(frozen=True)
class ZeroPad3d(_ZeroPad):
    """Pad the last 3 dimensions with zeros."""

    padding: int | tuple[int, int, int, int, int, int]
    dims = 3


@dataclass(frozen=True)
class ReflectionPad1d(_Pad):
    """Reflect at the edges of the last dimension (edge not repeated; pads < size)."""

    padding: int | tuple[int, int]
    dims = 1
    mode = "reflect"


@dataclass(frozen=True)
class ReflectionPad2d(_Pad):
    """Reflect at the edges of the last 2 dimensions."""

    padding: int | tuple[int, int, int, int]
    dims = 2
    mode = "reflect"


@dataclass(frozen=True)
class ReflectionPad3d(_Pad):
    """Reflect at the edges of the last 3 dimensions."""

    padding: int | tuple[int, int, int, int, int, int]
    dims = 3
    mode = "reflect"


@dataclass(frozen=True)
class ReplicationPad1d(_Pad):
    """Repeat the edge values of the last dimension."""

    padding: int | tuple[int, int]
    dims = 1
    mode = "replicate"


@dataclass(frozen=True)
class ReplicationPad2d(_Pad):
    """Repeat the edge values of the last 2 dimensions."""

    padding: int | tuple[int, int, int, int]
    dims = 2
    mode = "replicate"


@dataclass(frozen=True)
class ReplicationPad3d(_Pad):
    """Repeat the edge values of the last 3 dimensions."""

    padding: int | tuple[int, int, int, int, int, int]
    dims = 3
    mode = "replicate"


@dataclass(frozen=True)
class CircularPad1d(_Pad):
    """Wrap the last dimension around (pads <= size)."""

    padding: int | tuple[int, int]
    dims = 1
    mode = "circular"


@dataclass(frozen=True)
class CircularPad2d(_Pad):
    """Wrap the last 2 dimensions around."""

    padding: int | tuple[int, int, int, int]
    dims = 2
    mode = "circular"


@dataclass(frozen=True)
class CircularPad3d(_Pad):
    """Wrap the last 3 dimensions around."""

    padding: int | tuple[int, int, int, int, int, int]
    dims = 3
    mode = "circular"
