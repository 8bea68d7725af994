"""Piecewise activation layers (``Hardtanh``, ``ReLU6``, ..., ``PReLU``, ``RReLU``).

``torch.nn`` constructors; each ``apply`` calls the function of the same name in
:mod:`fdl.nn.functional`. ``inplace`` arguments are accepted and have no effect: fdl layers
never mutate their input. Only ``PReLU`` has parameters (``weight``, torch's name) and only
``RReLU`` is random (its slopes come from ``key`` when ``train=True``).

Example:
    >>> import torch, fdl
    >>> layer = fdl.nn.Hardtanh(-2.0, 2.0)
    >>> layer.apply({}, torch.tensor([-3.0, 1.0, 3.0]))
    tensor([-2.,  1.,  2.])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fdl import random as _random
from fdl.nn import _functional_piecewise as _F
from fdl.nn._base import Layer, OptKey, Params, Tensor
from fdl.nn._fn_layer import _FnLayer

__all__ = [
    "Hardshrink",
    "Hardsigmoid",
    "Hardswish",
    "Hardtanh",
    "PReLU",
    "RReLU",
    "ReLU6",
    "Softshrink",
    "Threshold",
]


class Hardtanh(_FnLayer, fn=_F.hardtanh):
    """``y = clamp(x, min_val, max_val)``; see :func:`fdl.nn.functional.hardtanh`."""

    min_val: float = -1.0
    max_val: float = 1.0
    inplace: bool = False

    def _check_fields(self) -> None:
        if self.max_val <= self.min_val:
            raise ValueError(
                f"Hardtanh: max_val ({self.max_val}) must be greater than min_val ({self.min_val})"
            )


class ReLU6(_FnLayer, fn=_F.relu6):
    """``y = clamp(x, 0, 6)``; see :func:`fdl.nn.functional.relu6`."""

    inplace: bool = False


class Hardsigmoid(_FnLayer, fn=_F.hardsigmoid):
    """``y = clamp(x / 6 + 1/2, 0, 1)``; see :func:`fdl.nn.functional.hardsigmoid`."""

    inplace: bool = False


class Hardswish(_FnLayer, fn=_F.hardswish):
    """``y = x * hardsigmoid(x)``; see :func:`fdl.nn.functional.hardswish`."""

    inplace: bool = False


class Hardshrink(_FnLayer, fn=_F.hardshrink):
    """``y = x`` where ``|x| > lambd``, else 0; see :func:`fdl.nn.functional.hardshrink`."""

    lambd: float = 0.5


class Softshrink(_FnLayer, fn=_F.softshrink):
    """``y = sign(x) * max(|x| - lambd, 0)``; see :func:`fdl.nn.functional.softshrink`."""

    lambd: float = 0.5

    def _check_fields(self) -> None:
        if self.lambd < 0:
            raise ValueError(f"Softshrink: lambd must be >= 0, got {self.lambd}")


class Threshold(_FnLayer, fn=_F.threshold):
    """``y = x`` where ``x > threshold``, else ``value``; see :func:`fdl.nn.functional.threshold`.

    Example:
        >>> import torch
        >>> Threshold(0.0, -1.0).apply({}, torch.tensor([-2.0, 2.0]))
        tensor([-1.,  2.])
    """

    threshold: float
    value: float
    inplace: bool = False


@dataclass(frozen=True)
class PReLU(Layer):
    """Parametric ReLU, as ``torch.nn.PReLU``: ``y = where(x > 0, x, weight * x)``.

    Params: ``weight`` ``(num_parameters,)``, every entry ``init``. With
    ``num_parameters > 1`` it must equal the channel count (dimension 1 of the input).

    Args:
        num_parameters: 1 (one shared slope) or the number of channels.
        init: the initial slope.
        device: device of the initialised params.
        dtype: dtype of the initialised params.

    Example:
        >>> import torch, fdl
        >>> layer = fdl.nn.PReLU(2)
        >>> params = layer.init(fdl.random.key(0))
        >>> layer.apply(params, torch.tensor([[-4.0, -4.0]]))
        tensor([[-1., -1.]])
    """

    num_parameters: int = 1
    init_value: float = 0.25
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None

    def __init__(
        self,
        num_parameters: int = 1,
        init: float = 0.25,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(num_parameters, int) or num_parameters < 1:
            raise ValueError(f"PReLU: num_parameters must be a positive int, got {num_parameters}")
        object.__setattr__(self, "num_parameters", num_parameters)
        object.__setattr__(self, "init_value", float(init))
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "dtype", dtype)

    def init(self, key: _random.Key | None = None) -> Params:
        """``{'weight': full((num_parameters,), init)}`` (deterministic; ``key`` unused)."""
        return {
            "weight": torch.full(
                (self.num_parameters,), self.init_value, dtype=self.dtype, device=self.device
            )
        }

    def apply(
        self, params: Params, x: torch.Tensor, *, key: Any = None, train: bool = False
    ) -> torch.Tensor:
        """``(N, C, *)`` (any shape when ``num_parameters == 1``) -> same shape."""
        return _F.prelu(x, params["weight"])


class RReLU(Layer):
    """Randomised leaky ReLU, as ``torch.nn.RReLU``.

    ``train=True``: ``y = where(x >= 0, x, a * x)`` with ``a ~ U(lower, upper)`` per
    element, drawn from ``key``; ``train=False``: the slope ``(lower + upper) / 2``.

    Args:
        lower: lower bound of the slope.
        upper: upper bound of the slope.
        inplace: no effect.

    Note:
        torch samples from its global RNG in ``.train()`` mode; fdl takes ``train`` and
        ``key`` per call.

    Example:
        >>> import torch, fdl
        >>> RReLU(0.1, 0.3).apply({}, torch.tensor([-1.0, 1.0]))
        tensor([-0.2000,  1.0000])
    """

    lower: float = 1.0 / 8
    upper: float = 1.0 / 3
    inplace: bool = False

    def _check_fields(self) -> None:
        if not 0 <= self.lower <= self.upper:
            raise ValueError(f"RReLU: needs 0 <= lower <= upper, got {self.lower}, {self.upper}")

    def apply(
        self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """Same shape in and out; ``key`` is required when ``train=True``."""
        if train and key is None:
            raise ValueError("RReLU: train=True needs key=... (an fdl.random key) for the slopes")
        return _F.rrelu(x, self.lower, self.upper, train, key=key)
