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

from dataclasses import dataclass
from typing import Any

import torch

from fdl.nn import _functional_activations as _F
from fdl.nn._base import Layer, Params

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
    """Shared ``apply`` of the parameter-free activation layers."""

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def param_shapes(self) -> Params:
        """``{}``: activations have no parameters."""
        return {}

    def apply(
        self,
        params: Params,
        x: torch.Tensor,
        *,
        key: Any = None,
        train: bool = False,
    ) -> torch.Tensor:
        """``y = f(x)`` elementwise (softmax family: along ``dim``); any input shape.

        Args:
            params: ``{}`` (what ``init`` returns).
            x: input tensor of any shape.
            key: unused.
            train: unused.

        Returns:
            A tensor of ``x``'s shape.
        """
        if not torch.compiler.is_compiling():  # validated eagerly; dynamo cannot trace optree
            self.check_params(params)
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{type(self).__name__}: expected a tensor input, got {type(x).__name__}"
            )
        return self._forward(x)


@dataclass(frozen=True)
class ReLU(_Activation):
    """``y = max(x, 0)``; see :func:`fdl.nn.functional.relu`. ``inplace`` has no effect."""

    inplace: bool = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.relu(x)


@dataclass(frozen=True)
class LeakyReLU(_Activation):
    """``y = where(x > 0, x, negative_slope * x)``. ``inplace`` has no effect."""

    negative_slope: float = 0.01
    inplace: bool = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.leaky_relu(x, self.negative_slope)


@dataclass(frozen=True)
class ELU(_Activation):
    """``y = where(x > 0, x, alpha * (exp(x) - 1))``. ``inplace`` has no effect."""

    alpha: float = 1.0
    inplace: bool = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.elu(x, self.alpha)


@dataclass(frozen=True)
class GELU(_Activation):
    """Gaussian error linear unit, exact (``'none'``) or ``'tanh'`` approximation.

    Example:
        >>> import torch
        >>> GELU(approximate="tanh").apply({}, torch.zeros(2))
        tensor([0., 0.])
    """

    approximate: str = "none"

    def __post_init__(self) -> None:
        if self.approximate not in ("none", "tanh"):
            raise ValueError(
                f"GELU: approximate must be 'none' or 'tanh', got {self.approximate!r}"
            )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.gelu(x, approximate=self.approximate)


@dataclass(frozen=True)
class SiLU(_Activation):
    """``y = x * sigmoid(x)``. ``inplace`` has no effect."""

    inplace: bool = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.silu(x)


@dataclass(frozen=True)
class Sigmoid(_Activation):
    """``y = 1 / (1 + exp(-x))``."""

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.sigmoid(x)


@dataclass(frozen=True)
class Tanh(_Activation):
    """``y = tanh(x)``."""

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.tanh(x)


@dataclass(frozen=True)
class Softmax(_Activation):
    """Softmax along ``dim`` (``None``: torch's legacy default); slices sum to one."""

    dim: int | None = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.softmax(x, self.dim)


@dataclass(frozen=True)
class LogSoftmax(_Activation):
    """Log-softmax along ``dim`` (``None``: torch's legacy default)."""

    dim: int | None = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.log_softmax(x, self.dim)
