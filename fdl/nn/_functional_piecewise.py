"""Piecewise activations as pure functions, with ``torch.nn.functional``'s names and defaults.

``hardtanh``, ``relu6``, ``hardsigmoid``, ``hardswish``, ``hardshrink``, ``softshrink``,
``threshold``, ``prelu`` and ``rrelu``, each written with ``torch.where`` so that the
gradient at every kink is torch's (stated per function). ``inplace`` exists for signature
compatibility; only ``False`` is accepted (fdl never mutates its inputs).
"""

from __future__ import annotations

import torch

from fdl import random as _random
from fdl.nn._functional_activations import _checked

__all__ = [
    "hardshrink",
    "hardsigmoid",
    "hardswish",
    "hardtanh",
    "prelu",
    "relu6",
    "rrelu",
    "softshrink",
    "threshold",
]

Tensor = torch.Tensor


def hardtanh(
    input: Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False
) -> Tensor:
    """Clamp to ``[min_val, max_val]``: ``y = min(max(input, min_val), max_val)``.

    The gradient is 1 strictly inside the interval and 0 at and beyond its ends, as torch's.

    Example:
        >>> import torch
        >>> hardtanh(torch.tensor([-2.0, 0.5, 2.0]))
        tensor([-1.0000,  0.5000,  1.0000])
    """
    _checked("hardtanh", input, inplace)
    if min_val > max_val:
        raise ValueError(
            f"hardtanh: min_val ({min_val}) cannot be greater than max_val ({max_val})"
        )
    inside = (input > min_val) & (input < max_val)
    ends = torch.where(input <= min_val, min_val, max_val).to(input.dtype)
    return torch.where(inside, input, ends)


def relu6(input: Tensor, inplace: bool = False) -> Tensor:
    """``y = min(max(input, 0), 6)``: ``hardtanh(input, 0, 6)`` (gradient 0 at 0 and 6).

    Example:
        >>> import torch
        >>> relu6(torch.tensor([-1.0, 3.0, 9.0]))
        tensor([0., 3., 6.])
    """
    _checked("relu6", input, inplace)
    return hardtanh(input, 0.0, 6.0)


def hardsigmoid(input: Tensor, inplace: bool = False) -> Tensor:
    """``y = 0`` for ``input <= -3``, ``1`` for ``input >= 3``, else ``input / 6 + 1/2``.

    The gradient is ``1/6`` strictly inside ``(-3, 3)`` and 0 elsewhere, as torch's (whose
    float64 kernel uses ``1/6`` rounded to float32, a relative difference of 3e-8).

    Example:
        >>> import torch
        >>> hardsigmoid(torch.tensor([-4.0, 0.0, 4.0]))
        tensor([0.0000, 0.5000, 1.0000])
    """
    _checked("hardsigmoid", input, inplace)
    inside = (input > -3.0) & (input < 3.0)
    ends = (input >= 3.0).to(input.dtype)
    return torch.where(inside, input / 6.0 + 0.5, ends)


def hardswish(input: Tensor, inplace: bool = False) -> Tensor:
    """``y = input * hardsigmoid(input)``: 0 below -3, ``input`` above 3, else ``x (x + 3) / 6``.

    The gradient is that of torch's vectorised kernel: 0 up to -3, ``input / 3 + 1/2`` on
    ``(-3, 3)``, 1 from 3 on (torch's scalar kernel, used for the few trailing elements
    that do not fill a vector, gives -0.5 at exactly -3 and 1.5 at exactly 3).

    Example:
        >>> import torch
        >>> hardswish(torch.tensor([-4.0, 1.0, 4.0]))
        tensor([-0.0000,  0.6667,  4.0000])
    """
    _checked("hardswish", input, inplace)
    middle = input * (input + 3.0) / 6.0
    return torch.where(input <= -3.0, input * 0.0, torch.where(input < 3.0, middle, input))


def hardshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    """``y = input`` where ``|input| > lambd``, else 0 (gradient 0 on ``[-lambd, lambd]``).

    Example:
        >>> import torch
        >>> hardshrink(torch.tensor([-1.0, 0.2, 1.0]))
        tensor([-1.,  0.,  1.])
    """
    _checked("hardshrink", input)
    dead = (input >= -lambd) & (input <= lambd)
    return torch.where(dead, input * 0.0, input)


def softshrink(input: Tensor, lambd: float = 0.5) -> Tensor:
    """``y = input - lambd`` above ``lambd``, ``input + lambd`` below ``-lambd``, else 0.

    The gradient is 0 on ``[-lambd, lambd]`` and 1 elsewhere.

    Example:
        >>> import torch
        >>> softshrink(torch.tensor([-1.0, 0.2, 1.0]))
        tensor([-0.5000,  0.0000,  0.5000])
    """
    _checked("softshrink", input)
    if lambd < 0:
        raise ValueError(f"softshrink: lambda must be greater or equal to 0, but found {lambd}")
    shrunk = torch.where(input > lambd, input - lambd, input + lambd)
    dead = (input >= -lambd) & (input <= lambd)
    return torch.where(dead, input * 0.0, shrunk)


def threshold(input: Tensor, threshold: float, value: float, inplace: bool = False) -> Tensor:
    """``y = input`` where ``input > threshold``, else ``value`` (gradient 0 there).

    Example:
        >>> import torch
        >>> threshold(torch.tensor([0.5, 2.0]), 1.0, -7.0)
        tensor([-7.,  2.])
    """
    _checked("threshold", input, inplace)
    return torch.where(input > threshold, input, torch.full_like(input, value))


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """Parametric ReLU: ``y = where(input > 0, input, weight * input)``.

    ``weight`` has one slope per channel (dimension 1 of ``input``) or a single slope (the
    only choice for inputs of fewer than 2 dimensions, as in torch).

    Args:
        input: ``(N, C, *)``; any shape with a single slope.
        weight: ``(C,)`` or ``(1,)`` slopes.

    Returns:
        A tensor of ``input``'s shape.

    Example:
        >>> import torch
        >>> prelu(torch.tensor([[-2.0, 2.0]]), torch.tensor([0.25]))
        tensor([[-0.5000,  2.0000]])
    """
    _checked("prelu", input)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"prelu: weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() > 1:
        raise ValueError(f"prelu: weight must be 1-d, got shape {tuple(weight.shape)}")
    c = weight.numel()
    channels = input.shape[1] if input.dim() >= 2 else 1  # torch: no channel dim below 2-d
    if c not in (1, channels):
        raise ValueError(
            f"prelu: weight has {c} slopes but the input has {channels} channels "
            "(dimension 1; inputs of fewer than 2 dimensions have one channel)"
        )
    if input.dim() >= 2:
        weight = weight.reshape(c, *([1] * (input.dim() - 2)))  # (C, 1, ..., 1)
    else:
        weight = weight.reshape(())
    return torch.where(input > 0, input, weight * input)


def rrelu(
    input: Tensor,
    lower: float = 1.0 / 8,
    upper: float = 1.0 / 3,
    training: bool = False,
    inplace: bool = False,
    *,
    key: _random.Key | None = None,
) -> Tensor:
    """Randomised leaky ReLU.

    Training: ``y = where(input >= 0, input, a * input)`` with one slope
    ``a ~ U(lower, upper)`` per element, drawn from ``key``. Evaluation: the fixed slope
    ``(lower + upper) / 2``, as ``leaky_relu``.

    Args:
        input: any shape.
        lower: lower bound of the slope.
        upper: upper bound of the slope.
        training: draw random slopes (needs ``key``).
        inplace: must be ``False``.
        key: an ``fdl.random`` key, required when ``training``.

    Returns:
        A tensor of ``input``'s shape.

    Note:
        torch draws the slopes from its global RNG; fdl from ``key``, so the same key gives
        the same slopes.

    Example:
        >>> import torch
        >>> rrelu(torch.tensor([-1.0, 2.0]), 0.2, 0.4)
        tensor([-0.3000,  2.0000])
    """
    _checked("rrelu", input, inplace)
    if not 0 <= lower <= upper:
        raise ValueError(f"rrelu: needs 0 <= lower <= upper, got lower={lower}, upper={upper}")
    if not training:
        slope = (lower + upper) / 2
        return torch.where(input > 0, input, input * slope)
    if key is None:
        raise ValueError("rrelu with training=True needs key=... (an fdl.random key)")
    a = _random.uniform(key, tuple(input.shape), lower, upper, dtype=input.dtype)
    return torch.where(input > 0, input, input * a.to(input.device))
