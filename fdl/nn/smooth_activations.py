"""Smooth activation layers and the rest of the softmax family (``CELU`` ... ``Softmax2d``).

``torch.nn`` constructors, no parameters; each ``apply`` calls the function of the same
name in :mod:`fdl.nn.functional`. ``inplace`` arguments have no effect.

Example:
    >>> import torch, fdl
    >>> fdl.nn.Softsign().apply({}, torch.tensor([1.0]))
    tensor([0.5000])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fdl.nn import _functional_activations as _A
from fdl.nn import _functional_smooth as _F
from fdl.nn.piecewise_activations import _Pointwise

__all__ = [
    "CELU",
    "GLU",
    "LogSigmoid",
    "Mish",
    "SELU",
    "Softmax2d",
    "Softmin",
    "Softplus",
    "Softsign",
    "Tanhshrink",
]


@dataclass(frozen=True)
class CELU(_Pointwise):
    """``y = where(x > 0, x, alpha * (exp(x / alpha) - 1))``; see :func:`fdl.nn.functional.celu`."""

    alpha: float = 1.0
    inplace: bool = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.celu(x, self.alpha)


@dataclass(frozen=True)
class SELU(_Pointwise):
    """``y = scale * elu(x, alpha)`` with SELU's constants; see :func:`fdl.nn.functional.selu`."""

    inplace: bool = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.selu(x)


@dataclass(frozen=True)
class GLU(_Pointwise):
    """``a, b = split(x, 2, dim)``; ``y = a * sigmoid(b)``; ``dim`` halves."""

    dim: int = -1

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.glu(x, self.dim)


@dataclass(frozen=True)
class LogSigmoid(_Pointwise):
    """``y = log(sigmoid(x))``, stable; see :func:`fdl.nn.functional.logsigmoid`."""

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _A.logsigmoid(x)


@dataclass(frozen=True)
class Mish(_Pointwise):
    """``y = x * tanh(softplus(x))``; see :func:`fdl.nn.functional.mish`."""

    inplace: bool = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.mish(x)


@dataclass(frozen=True)
class Softplus(_Pointwise):
    """``y = log(1 + exp(beta * x)) / beta``, linear above ``threshold``."""

    beta: float = 1.0
    threshold: float = 20.0

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.softplus(x, self.beta, self.threshold)


@dataclass(frozen=True)
class Softsign(_Pointwise):
    """``y = x / (1 + |x|)``."""

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.softsign(x)


@dataclass(frozen=True)
class Tanhshrink(_Pointwise):
    """``y = x - tanh(x)``."""

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.tanhshrink(x)


@dataclass(frozen=True)
class Softmin(_Pointwise):
    """``y = softmax(-x, dim)`` (``None``: torch's legacy default dimension)."""

    dim: int | None = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return _F.softmin(x, self.dim)


@dataclass(frozen=True)
class Softmax2d(_Pointwise):
    """Softmax over the channels of each location: ``(N, C, H, W)`` or ``(C, H, W)``, dim -3."""

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(
                f"Softmax2d: expected input of shape (N, C, H, W) or (C, H, W), got "
                f"{tuple(x.shape)}"
            )
        return _A.softmax(x, -3)
