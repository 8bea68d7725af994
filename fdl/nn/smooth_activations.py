"""Smooth activation layers and the rest of the softmax family (``CELU`` ... ``Softmax2d``).

``torch.nn`` constructors, no parameters; each ``apply`` calls the function of the same
name in :mod:`fdl.nn.functional`. ``inplace`` arguments have no effect.

Example:
    >>> import torch, fdl
    >>> fdl.nn.Softsign().apply({}, torch.tensor([1.0]))
    tensor([0.5000])
"""

from __future__ import annotations

import torch

from fdl.nn import _functional_activations as _A
from fdl.nn import _functional_smooth as _F
from fdl.nn._fn_layer import _FnLayer

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


class CELU(_FnLayer, fn=_F.celu):
    """``y = where(x > 0, x, alpha * (exp(x / alpha) - 1))``; see :func:`fdl.nn.functional.celu`."""

    alpha: float = 1.0
    inplace: bool = False


class SELU(_FnLayer, fn=_F.selu):
    """``y = scale * elu(x, alpha)`` with SELU's constants; see :func:`fdl.nn.functional.selu`."""

    inplace: bool = False


class GLU(_FnLayer, fn=_F.glu):
    """``a, b = split(x, 2, dim)``; ``y = a * sigmoid(b)``; ``dim`` halves."""

    dim: int = -1


class LogSigmoid(_FnLayer, fn=_A.logsigmoid):
    """``y = log(sigmoid(x))``, stable; see :func:`fdl.nn.functional.logsigmoid`."""


class Mish(_FnLayer, fn=_F.mish):
    """``y = x * tanh(softplus(x))``; see :func:`fdl.nn.functional.mish`."""

    inplace: bool = False


class Softplus(_FnLayer, fn=_F.softplus):
    """``y = log(1 + exp(beta * x)) / beta``, linear above ``threshold``."""

    beta: float = 1.0
    threshold: float = 20.0


class Softsign(_FnLayer, fn=_F.softsign):
    """``y = x / (1 + |x|)``."""


class Tanhshrink(_FnLayer, fn=_F.tanhshrink):
    """``y = x - tanh(x)``."""


class Softmin(_FnLayer, fn=_F.softmin):
    """``y = softmax(-x, dim)`` (``None``: torch's legacy default dimension)."""

    dim: int | None = None


class Softmax2d(_FnLayer):
    """Softmax over the channels of each location: ``(N, C, H, W)`` or ``(C, H, W)``, dim -3."""

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (3, 4):
            raise ValueError(
                f"Softmax2d: expected input of shape (N, C, H, W) or (C, H, W), got "
                f"{tuple(x.shape)}"
            )
        return _A.softmax(x, -3)
