"""Plain gradient attributions: saliency and input times gradient."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fdl.explain._common import Target, gradient

__all__ = ["input_x_gradient", "saliency"]

Tensor = torch.Tensor


def saliency(
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = None,
    *,
    abs: bool = True,
    key: Tensor | None = None,
) -> Tensor:
    """Saliency map (Simonyan et al., 2013): the gradient of the target output.

    ``attr = |df_t/dx|`` with ``abs=True`` (Captum's default), else ``df_t/dx``,
    where ``f_t(x)_i = forward(x)[i, target_i]``.

    Args:
        forward: a pure function of the batch ``(N, ...)`` (close over params:
            ``lambda x: model.apply(params, x)``).
        inputs: the batch ``(N, ...)``.
        target: which output to explain (see :mod:`fdl.explain`).
        abs: take the absolute value of the gradient.
        key: unused (deterministic); accepted so every method has the same call.

    Returns:
        Attributions shaped like ``inputs``.

    Example:
        >>> import torch, fdl
        >>> w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
        >>> fdl.explain.saliency(lambda x: x @ w.T, torch.ones(1, 2), target=0)
        tensor([[1., 2.]])
    """
    grads = gradient(forward, inputs, target)
    return grads.abs() if abs else grads


def input_x_gradient(
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = None,
    *,
    key: Tensor | None = None,
) -> Tensor:
    """Input times gradient (Shrikumar et al., 2016): ``attr = x * df_t/dx``.

    Args:
        forward, inputs, target: as in :func:`saliency`.
        key: unused (deterministic).

    Returns:
        Attributions shaped like ``inputs``.

    Example:
        >>> import torch, fdl
        >>> w = torch.tensor([[1.0, -2.0]])
        >>> fdl.explain.input_x_gradient(lambda x: x @ w.T, torch.tensor([[3.0, 1.0]]), target=0)
        tensor([[ 3., -2.]])
    """
    return inputs * gradient(forward, inputs, target)
