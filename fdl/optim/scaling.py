"""Scaling blocks: constant and scheduled factors, the learning rate, weight decay, momentum.

Formulas use ``g`` for the incoming updates (gradients), ``θ`` for the params
and the state names of the code; ``count`` is the number of updates already
applied (0 at the first update).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fdl.optim import _common as C
from fdl.optim import _foreach as F
from fdl.optim.base import GradientTransformation, Params, ScalarOrSchedule
from fdl.optim.wrappers import masked

__all__ = [
    "ScaleByScheduleState",
    "TraceState",
    "add_decayed_weights",
    "identity",
    "scale",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "trace",
]

Tensor = torch.Tensor


def identity() -> GradientTransformation:
    """The transformation that returns the updates unchanged: :math:`u = g`.

    Example:
        >>> import torch
        >>> tx = identity()
        >>> tx.update({"w": torch.ones(2)}, tx.init(None))[0]
        {'w': tensor([1., 1.])}
    """
    return C.stateless("identity", lambda g, p: g)


def scale(step_size: float) -> GradientTransformation:
    r"""Multiply the updates by a constant: :math:`u = s\,g` with ``s = step_size``.

    Args:
        step_size: the constant factor ``s``.

    Returns:
        A stateless :class:`GradientTransformation`.

    Example:
        >>> import torch
        >>> tx = scale(-2.0)
        >>> tx.update({"w": torch.ones(2)}, tx.init(None))[0]
        {'w': tensor([-2., -2.])}
    """
    return C.stateless("scale", lambda g, p: F.scale(g, step_size))


class ScaleByScheduleState(NamedTuple):
    """State of :func:`scale_by_schedule`: the number of updates already applied."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)


def scale_by_schedule(step_size_fn: Callable[[Tensor], Tensor]) -> GradientTransformation:
    r"""Multiply the updates by a schedule of the step count: :math:`u = s(\text{count})\,g`.

    ``count`` is the number of updates already applied (0 at the first update).

    Args:
        step_size_fn: a function of the int64 step-count tensor returning the factor.

    Returns:
        A :class:`GradientTransformation` with :class:`ScaleByScheduleState`.

    Example:
        >>> import torch
        >>> tx = scale_by_schedule(lambda c: 0.5 ** c)
        >>> s = tx.init({"w": torch.ones(1)})
        >>> u, s = tx.update({"w": torch.ones(1)}, s)
        >>> u, s = tx.update({"w": torch.ones(1)}, s)
        >>> u["w"], s.count
        (tensor([0.5000]), tensor(2))
    """

    def step(g: list[Tensor], state: ScaleByScheduleState) -> Any:
        factor = step_size_fn(state.count)
        if isinstance(factor, Tensor):
            factor = factor.to(torch.float64)
        return F.scale(g, factor), {}

    return C.stateful("scale_by_schedule", ScaleByScheduleState, step, trees=())


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    r"""Scale by the (negated) learning rate: :math:`u = -\eta\,g`.

    This block holds gradient descent's sign flip, so that
    :func:`fdl.optim.apply_updates` only adds.

    Args:
        learning_rate: a float ``>= 0``, a 1-element tensor, or a schedule (a
            function of the step-count tensor returning the learning rate, e.g.
            one of :mod:`fdl.optim.schedules`).
        flip_sign: multiply by ``-lr`` (default) rather than ``lr``.

    Returns:
        A stateless transformation for a constant ``lr``; for a schedule, one
        with :class:`ScaleByScheduleState` (the schedule sees 0 at the first
        update, 1 at the second, ...).

    Raises:
        ValueError: ``Invalid learning rate`` for a negative number (torch's check).

    Example:
        >>> import torch
        >>> tx = scale_by_learning_rate(0.1)
        >>> tx.update({"w": torch.ones(2)}, tx.init(None))[0]
        {'w': tensor([-0.1000, -0.1000])}
    """
    C.check_lr(learning_rate)
    sign = -1.0 if flip_sign else 1.0
    if callable(learning_rate):
        fn = learning_rate
        return scale_by_schedule(lambda count: sign * fn(count))
    if isinstance(learning_rate, Tensor):
        return scale_by_schedule(lambda count: sign * learning_rate)
    return scale(sign * float(learning_rate))


def add_decayed_weights(
    weight_decay: float | Tensor = 0.0, mask: Any | Callable[[Params], Any] | None = None
) -> GradientTransformation:
    r"""Add the scaled parameters: :math:`u = g + \lambda\,\theta` with ``λ = weight_decay``.

    Before ``scale_by_learning_rate`` this gives torch's L2 penalty (``weight_decay``
    of Adam, SGD, ...); placed after the adaptive scaling it gives decoupled
    decay (AdamW: :math:`\theta' = \theta - \eta(\hat u + \lambda\theta)`).

    Args:
        weight_decay: the factor ``λ`` (>= 0).
        mask: optional tree of booleans with the params' structure (or a function
            of the params returning one); decay is added only where ``True``.

    Returns:
        A stateless transformation (wrapped in :func:`masked` when ``mask`` is given).

    Example:
        >>> import torch
        >>> tx = add_decayed_weights(0.5)
        >>> p = {"w": torch.tensor([2.0])}
        >>> tx.update({"w": torch.tensor([1.0])}, tx.init(p), p)[0]
        {'w': tensor([2.])}
    """
    C.check_nonneg("weight_decay", weight_decay)
    if isinstance(weight_decay, Tensor):  # a learned decay: alpha would read it as a number
        fn = lambda g, p: F.linear_combination(g, 1.0, p, weight_decay)  # noqa: E731
    else:
        fn = lambda g, p: F.add(g, p, alpha=weight_decay)  # noqa: E731
    tx = C.stateless("add_decayed_weights", fn, needs_params=True)
    return masked(tx, mask) if mask is not None else tx


class TraceState(NamedTuple):
    """State of :func:`trace`: step count and momentum buffer."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    trace: Any


def trace(
    decay: float | Tensor | Callable[[Tensor], Tensor],
    nesterov: bool = False,
    dampening: float | Tensor = 0.0,
) -> GradientTransformation:
    r"""Momentum as in ``torch.optim.SGD``.

    .. math::
        b_t = \begin{cases} g_t & t = 1 \\ \mu\, b_{t-1} + (1-d)\, g_t & t > 1 \end{cases}
        \qquad
        u_t = \begin{cases} g_t + \mu\, b_t & \text{nesterov} \\ b_t & \text{otherwise}\end{cases}

    with ``μ = decay`` and ``d = dampening``. The first step copies the gradient
    (no dampening), as torch does; Optax's ``trace`` has no dampening.

    Args:
        decay: the momentum ``μ`` (>= 0): a float, or a schedule of the step count
            (e.g. ``OneCycleLR(...).momentum``) whose value at each update is used,
            as torch's schedulers set ``momentum`` before each ``step()``.
        nesterov: use Nesterov momentum.
        dampening: the dampening ``d``.

    Returns:
        A transformation with :class:`TraceState`.

    Example:
        >>> import torch
        >>> tx = trace(0.9)
        >>> s = tx.init({"w": torch.zeros(1)})
        >>> u, s = tx.update({"w": torch.ones(1)}, s)
        >>> u, s = tx.update({"w": torch.ones(1)}, s)
        >>> u["w"]
        tensor([1.9000])
    """
    if not callable(decay):
        C.check_nonneg("momentum", decay)

    def step(g: list[Tensor], state: TraceState, trace: list[Tensor]) -> Any:
        mu = C.scheduled(decay, state.count)
        if not isinstance(dampening, Tensor) and dampening == 0.0:
            # from a zero buffer, decay * 0 + g == g exactly: the first step needs no branch
            new = F.decayed_sum(trace, mu, g)
        else:
            # 1 at the first step (torch copies the gradient), 1 - d after; in float64
            first = (state.count == 0).to(torch.float64)
            new = F.linear_combination(trace, mu, g, 1.0 - dampening * (1.0 - first))
        if not nesterov:
            return new, {"trace": new}
        if isinstance(mu, Tensor):
            return F.linear_combination(g, 1.0, new, mu), {"trace": new}
        return F.add(g, new, alpha=mu), {"trace": new}

    return C.stateful("trace", TraceState, step, trees=("trace",))
