"""Activation layers: ``torch.nn`` constructors, no parameters, pure ``apply``.

Each layer's ``init`` returns ``{}`` and ``apply(params, x)`` calls the function
of the same name in :mod:`fdl.nn.functional`. The ``inplace`` constructor
arguments are accepted for compatibility with ``torch.nn`` and have no effect:
fdl layers never mutate their input.

Example:
    >>> import torch, fdl
    >>> layer = fdl.nn.LogSoftmax(dim=1)
    >>> layer.apply(layer.init(fdl.random.key(0)), torch.zeros(1, 2)).exp()
    tensor([[0.5000, 0.5000]])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from fdl.nn import _functional_activations as _F
from fdl.nn._base import Layer, OptKey, Params, Tensor, field
from fdl.nn._layer_utils import check_tensor, one_of

__all__ = [
    "ELU",
    "GELU",
    "LeakyReLU",
    "LogSoftmax",
    "ReLU",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
]


class _Activation(Layer):
    """Shared ``apply`` of the parameter-free activation layers: ``y = _forward(x)``.

    ``_forward`` calls the functional form ``_function`` with the layer's fields by
    name, every field but ``inplace`` (``LeakyReLU(0.2)`` calls
    ``leaky_relu(x, negative_slope=0.2)``); a layer whose functional form takes other
    arguments overrides ``_forward``.
    """

    _function: ClassVar[Callable[..., Tensor]]

    def _forward(self, x: Tensor) -> Tensor:
        options: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "inplace"
        }
        return type(self)._function(x, **options)

    def apply(
        self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """``y = f(x)`` elementwise (softmax family: along ``dim``); any input shape.

        Args:
            params: ``{}`` (what ``init`` returns).
            x: input tensor of any shape.
            key: unused.
            train: unused.

        Returns:
            A tensor of ``x``'s shape.
        """
        check_tensor(self, x)
        return self._forward(x)


class ReLU(_Activation):
    """``y = max(x, 0)``; see :func:`fdl.nn.functional.relu`. ``inplace`` has no effect."""

    _function = _F.relu
    inplace: bool = False


class LeakyReLU(_Activation):
    """``y = where(x > 0, x, negative_slope * x)``. ``inplace`` has no effect."""

    _function = _F.leaky_relu
    negative_slope: float = 0.01
    inplace: bool = False


class ELU(_Activation):
    """``y = where(x > 0, x, alpha * (exp(x) - 1))``. ``inplace`` has no effect."""

    _function = _F.elu
    alpha: float = 1.0
    inplace: bool = False


class GELU(_Activation):
    """Gaussian error linear unit, exact (``'none'``) or ``'tanh'`` approximation.

    Example:
        >>> import torch
        >>> GELU(approximate="tanh").apply({}, torch.zeros(2))
        tensor([0., 0.])
    """

    _function = _F.gelu
    approximate: str = field(default="none", converter=one_of("none", "tanh"))


class SiLU(_Activation):
    """``y = x * sigmoid(x)``. ``inplace`` has no effect."""

    _function = _F.silu
    inplace: bool = False


class Sigmoid(_Activation):
    """``y = 1 / (1 + exp(-x))``."""

    _function = _F.sigmoid


class Tanh(_Activation):
    """``y = tanh(x)``."""

    _function = _F.tanh


class Softmax(_Activation):
    """Softmax along ``dim`` (``None``: torch's legacy default); slices sum to one."""

    _function = _F.softmax
    dim: int | None = None


class LogSoftmax(_Activation):
    """Log-softmax along ``dim`` (``None``: torch's legacy default)."""

    _function = _F.log_softmax
    dim: int | None = None
