"""Fast gradient sign method (Goodfellow et al., 2015)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fdl.robust._objective import input_gradient, scalar

__all__ = ["fgsm"]

Tensor = torch.Tensor


def fgsm(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor = 8 / 255,
    targeted: bool = False,
    clamp: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """One signed-gradient step of size ``eps``, clamped to the valid range.

    ``x_adv = clamp(x + eps * sign(d cost / dx), lo, hi)`` with
    ``cost = CE(forward(x), y)`` (untargeted: move away from the label ``y``) or
    ``cost = -CE(forward(x), y)`` (targeted: move towards the class ``y``).

    Args:
        forward: a pure function from a batch in ``[lo, hi]`` to logits
            (or log-probabilities), e.g. ``lambda x: model.apply(params, x)``.
        x: the clean batch ``(N, ...)``, values in ``[lo, hi]``.
        y: ``(N,)`` class indices: the true labels, or the targets if ``targeted``.
        eps: the L-inf budget (a float, or a tensor to avoid recompiles when it changes).
        targeted: descend towards ``y`` instead of ascending away from it.
        clamp: the valid input range ``(lo, hi)``; torchattacks fixes ``(0, 1)``.

    Returns:
        The adversarial batch, shaped like ``x``.

    Example:
        >>> import torch, fdl
        >>> w = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        >>> x = torch.tensor([[0.5, 0.5]])
        >>> fdl.robust.fgsm(lambda v: v @ w.T, x, torch.tensor([0]), eps=0.25)
        tensor([[0.2500, 0.7500]])
    """
    grad = input_gradient(forward, x, y, targeted)
    lo, hi = clamp
    return torch.clamp(x + scalar(eps, x) * grad.sign(), min=lo, max=hi)
