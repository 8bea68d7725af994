"""The attacks' objective: cross-entropy on logits, ascended (untargeted) or descended."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fdl.losses import cross_entropy

__all__ = ["input_gradient", "per_example_view", "scalar"]

Tensor = torch.Tensor


def input_gradient(
    forward: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, targeted: bool
) -> Tensor:
    """``d cost / dx`` with ``cost = CE(forward(x), y)``, or ``-CE`` when ``targeted``.

    ``CE`` is the batch mean of the cross-entropy on logits (torchattacks'
    ``nn.CrossEntropyLoss()``); log-probabilities give the same loss.
    """

    def cost(v: Tensor) -> Tensor:
        loss = cross_entropy(forward(v), y)
        return -loss if targeted else loss

    return torch.func.grad(cost)(x)


def scalar(value: float | Tensor, like: Tensor) -> Tensor:
    """``value`` as a tensor of ``like``'s dtype and device (0-d, or as given)."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def per_example_view(t: Tensor, ndim: int) -> Tensor:
    """``(N,) -> (N, 1, ..., 1)`` broadcasting against an ``ndim``-D batch."""
    return t.reshape(t.shape[0], *(1,) * (ndim - 1))
