"""Momentum as a moving average of the gradients (Muon's), beside SGD's :func:`fdl.optim.trace`.

``trace`` sums ``μ b + g``; :func:`ema_trace` averages ``μ b + (1 - μ) g``, as
``torch.optim.Muon`` keeps its momentum buffer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from fdl.optim import _common as C
from fdl.optim.base import GradientTransformation

__all__ = ["EmaTraceState", "ema_trace"]

Tensor = torch.Tensor
Leaves = list[Tensor]


class EmaTraceState(NamedTuple):
    """State of :func:`ema_trace`: step count and the averaged momentum buffer ``trace``."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    trace: Any


def _lerp(x: Tensor, y: Tensor, w: Any) -> Tensor:
    """``x + w (y - x)``; a tensor weight (a learned momentum) in ``x``'s dtype."""
    return torch.lerp(x, y, w.to(x.dtype) if isinstance(w, Tensor) else w)


def ema_trace(decay: float | Tensor = 0.95, nesterov: bool = True) -> GradientTransformation:
    r"""Momentum as an exponential moving average of the gradients.

    .. math::
        b_t = \mu\, b_{t-1} + (1-\mu)\, g_t \ \ (b_0 = 0), \qquad
        u_t = \begin{cases} (1-\mu)\, g_t + \mu\, b_t & \text{nesterov} \\
            b_t & \text{otherwise} \end{cases}

    with ``μ = decay``; both are ``torch.lerp`` steps, as in ``torch.optim.Muon``.

    Args:
        decay: ``μ >= 0`` (a float or a tensor that may be learned).
        nesterov: look ahead along the buffer.

    Returns:
        A transformation with :class:`EmaTraceState`.

    Example:
        >>> import torch
        >>> tx = ema_trace(0.5, nesterov=False)
        >>> s = tx.init({"w": torch.zeros(1)})
        >>> u, s = tx.update({"w": torch.ones(1)}, s)
        >>> u, s = tx.update({"w": torch.ones(1)}, s)
        >>> u["w"]
        tensor([0.7500])
    """
    C.check_nonneg("momentum", decay)

    def step(g: Leaves, state: EmaTraceState, trace: Leaves) -> Any:
        new = [_lerp(b, gi, 1.0 - decay) for b, gi in zip(trace, g, strict=True)]
        if not nesterov:
            return new, {"trace": new}
        return [_lerp(gi, b, decay) for gi, b in zip(g, new, strict=True)], {"trace": new}

    return C.stateful("ema_trace", EmaTraceState, step, trees=("trace",))
