"""Smooth activations and the rest of the softmax family, as pure functions.

``celu``, ``selu``, ``softplus``, ``softsign``, ``tanhshrink``, ``mish``, ``glu``,
``softmin`` and ``gumbel_softmax``, with ``torch.nn.functional``'s names and defaults,
written from elementwise math (exponentials fed only the branch's own inputs so no unused
branch overflows into a gradient).
"""

from __future__ import annotations

import torch

from fdl import random as _random
from fdl.nn._functional_activations import _checked, softmax

__all__ = [
    "celu",
    "glu",
    "gumbel_softmax",
    "mish",
    "selu",
    "softmin",
    "softplus",
    "softsign",
    "tanhshrink",
]

Tensor = torch.Tensor

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _negative_part(input: Tensor) -> Tensor:
    """``input`` where ``input <= 0``, else 0: what the exponential branch may see."""
    return torch.where(input > 0, torch.zeros_like(input), input)


def selu(input: Tensor, inplace: bool = False) -> Tensor:
    """Scaled ELU: ``y = scale * where(input > 0, input, alpha * (exp(input) - 1))``.

    ``alpha = 1.6732632423543772``, ``scale = 1.0507009873554805`` (Klambauer et al., 2017).
    The gradient at 0 is ``scale * alpha``, as torch's.

    Example:
        >>> import torch
        >>> selu(torch.tensor([0.0, 1.0]))
        tensor([0.0000, 1.0507])
    """
    _checked("selu", input, inplace)
    negative = _SELU_ALPHA * torch.expm1(_negative_part(input))
    return _SELU_SCALE * torch.where(input > 0, input, negative)


def celu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """Continuously differentiable ELU.

    ``y = where(input > 0, input, alpha * (exp(input / alpha) - 1))``; the gradient at 0 is 1.

    Example:
        >>> import torch
        >>> celu(torch.tensor([0.0, 1.0]), alpha=2.0)
        tensor([0., 1.])
    """
    _checked("celu", input, inplace)
    if alpha == 0:
        raise ValueError("celu: alpha cannot be 0")
    negative = alpha * torch.expm1(_negative_part(input) / alpha)
    return torch.where(input > 0, input, negative)


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``y = log(1 + exp(beta * input)) / beta``, and ``input`` where ``beta * input > threshold``.

    The gradient is ``sigmoid(beta * input)`` below the threshold and 1 above, as torch's.

    Example:
        >>> import torch
        >>> softplus(torch.tensor([0.0, 30.0]))
        tensor([ 0.6931, 30.0000])
    """
    _checked("softplus", input)
    z = input * beta
    linear = z > threshold
    z_safe = torch.where(linear, torch.zeros_like(z), z)  # exp only sees the smooth branch
    return torch.where(linear, input, torch.log1p(torch.exp(z_safe)) / beta)


def softsign(input: Tensor) -> Tensor:
    """``y = input / (1 + |input|)``.

    Example:
        >>> import torch
        >>> softsign(torch.tensor([-1.0, 3.0]))
        tensor([-0.5000,  0.7500])
    """
    _checked("softsign", input)
    return input / (input.abs() + 1)


def tanhshrink(input: Tensor) -> Tensor:
    """``y = input - tanh(input)``.

    Example:
        >>> import torch
        >>> tanhshrink(torch.tensor([0.0]))
        tensor([0.])
    """
    _checked("tanhshrink", input)
    return input - torch.tanh(input)


def _softplus_stable(x: Tensor) -> Tensor:
    """``log(1 + exp(x))`` for any ``x``, gradient ``sigmoid(x)`` everywhere (0.5 at 0)."""
    pos = x > 0
    x_pos = torch.where(pos, x, torch.zeros_like(x))
    x_neg = torch.where(pos, torch.zeros_like(x), x)
    return torch.where(pos, x_pos + torch.log1p(torch.exp(-x_pos)), torch.log1p(torch.exp(x_neg)))


def mish(input: Tensor, inplace: bool = False) -> Tensor:
    """``y = input * tanh(softplus(input))`` (Misra, 2019).

    Example:
        >>> import torch
        >>> mish(torch.tensor([0.0, 1.0]))
        tensor([0.0000, 0.8651])
    """
    _checked("mish", input, inplace)
    return input * torch.tanh(_softplus_stable(input))


def glu(input: Tensor, dim: int = -1) -> Tensor:
    """Gated linear unit: ``a, b = split(input, 2, dim)``; ``y = a * sigmoid(b)``.

    Args:
        input: a tensor whose size along ``dim`` is even.
        dim: the dimension split in halves.

    Returns:
        ``input``'s shape with ``dim`` halved.

    Example:
        >>> import torch
        >>> glu(torch.tensor([3.0, 0.0]))
        tensor([1.5000])
    """
    _checked("glu", input)
    if input.dim() == 0:
        raise ValueError("glu: does not support scalars because halving size must be even")
    size = input.shape[dim]
    if size % 2:
        raise ValueError(f"glu: halving dimension must be even, but dimension {dim} is size {size}")
    a, b = input.split(size // 2, dim)
    return a * torch.sigmoid(b)


def softmin(
    input: Tensor,
    dim: int | None = None,
    _stacklevel: int = 3,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``y = softmax(-input, dim)``: slices along ``dim`` sum to one, small inputs weigh most.

    Example:
        >>> import torch
        >>> softmin(torch.tensor([0.0, 0.0]), dim=0)
        tensor([0.5000, 0.5000])
    """
    _checked("softmin", input)
    return softmax(-input, dim, dtype=dtype)  # torch's order: negate, then cast


def gumbel_softmax(
    logits: Tensor,
    tau: float = 1.0,
    hard: bool = False,
    eps: float = 1e-10,
    dim: int = -1,
    *,
    key: _random.Key,
) -> Tensor:
    """Samples from the Gumbel-softmax (concrete) distribution.

    ``g = -log(e)``, ``e ~ Exponential(1)`` drawn from ``key`` as ``-log(u)``,
    ``u ~ U(0, 1)``; ``y = softmax((logits + g) / tau, dim)``. With ``hard=True`` the
    result is the one-hot of ``argmax(y)`` in value, with ``y``'s gradient
    (``one_hot - y.detach() + y``).

    Args:
        logits: unnormalised log-probabilities.
        tau: temperature, positive.
        hard: return straight-through one-hot samples.
        eps: unused; kept for torch's signature.
        dim: the class dimension.
        key: an ``fdl.random`` key.

    Returns:
        A tensor of ``logits``' shape.

    Note:
        torch draws from its global RNG; fdl from ``key``.

    Example:
        >>> import torch, fdl
        >>> y = gumbel_softmax(torch.zeros(3, 4), hard=True, key=fdl.random.key(0))
        >>> y.sum(-1).tolist()
        [1.0, 1.0, 1.0]
    """
    _checked("gumbel_softmax", logits)
    u = _random.uniform(key, tuple(logits.shape), dtype=logits.dtype).to(logits.device)
    # u in [0, 1): 1 - u in (0, 1], so -log(1 - u) ~ Exponential(1) is finite
    gumbels = -torch.log(-torch.log1p(-u))
    y = softmax((logits + gumbels) / tau, dim)
    if not hard:
        return y
    index = y.detach().argmax(dim, keepdim=True)
    one_hot = torch.zeros_like(y).scatter(dim, index, 1.0)
    return one_hot - y.detach() + y
