"""Sign-based steps: Rprop's per-element step sizes, adapted from the sign of ``g_t g_{t-1}``.

Rprop (Riedmiller & Braun, 1993) ignores the gradient's magnitude: every
element moves by its own step size in the direction of ``-sign(g)``, and the
step size grows while the gradient keeps its sign and shrinks when it flips.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from fdl import tree
from fdl.optim import _common as C
from fdl.optim.base import GradientTransformation, Params

__all__ = ["ScaleByRpropState", "scale_by_rprop"]

Tensor = torch.Tensor
Leaves = list[Tensor]


class ScaleByRpropState(NamedTuple):
    """State of :func:`scale_by_rprop`: count, the previous gradient ``prev`` (0 where the
    last step was cancelled) and the per-element step sizes ``step_size``."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    prev: Any
    step_size: Any


def _initial_step_size(lr: Any, params: Params) -> Any:
    """``step_size_0 = lr`` everywhere; a schedule gives its value at the first step."""
    value = lr(C.zero_count(params)) if callable(lr) else lr
    if isinstance(value, Tensor):  # a tensor (maybe learned) lr: keep its graph
        return tree.map(lambda p: torch.zeros_like(p) + value.to(p.dtype), params)
    return tree.map(lambda p: torch.full_like(p, float(value)), params)


def scale_by_rprop(
    lr: Any = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50.0),
) -> GradientTransformation:
    r"""Rprop's sign step with adaptive step sizes, as ``torch.optim.Rprop`` computes it.

    .. math::
        s_t = \operatorname{sign}(g_t\, p_{t-1}), \quad
        f_t = \begin{cases} \eta_+ & s_t > 0 \\ \eta_- & s_t < 0 \\ 1 & s_t = 0 \end{cases},
        \quad \Delta_t = \operatorname{clamp}(f_t \Delta_{t-1},\ \Delta_{min},\ \Delta_{max})

    .. math::
        \tilde g_t = \begin{cases} 0 & s_t < 0 \\ g_t & \text{otherwise}\end{cases}, \qquad
        u_t = \operatorname{sign}(\tilde g_t)\, \Delta_t, \qquad p_t = \tilde g_t

    with ``Δ_0 = lr`` and ``p_0 = 0`` (so the first step keeps ``Δ_0``). After a sign
    flip the element does not move and its ``p`` is 0, so the next step neither
    grows nor shrinks it. ``u`` points up the gradient: the optimizer negates it.

    Args:
        lr: the initial step size ``Δ_0`` (a float, a tensor, or a schedule, whose
            value at the first step is used: torch reads ``lr`` only when it builds
            the state).
        etas: ``(η_-, η_+)`` with ``0 < η_- < 1 < η_+``.
        step_sizes: ``(Δ_min, Δ_max)``.

    Returns:
        A transformation with :class:`ScaleByRpropState`.

    Example:
        >>> import torch
        >>> tx = scale_by_rprop(lr=0.1)
        >>> s = tx.init({"w": torch.zeros(2)})
        >>> u, s = tx.update({"w": torch.tensor([1.0, -1.0])}, s)
        >>> u, s = tx.update({"w": torch.tensor([2.0, 3.0])}, s)  # same sign, flipped sign
        >>> u["w"], s.step_size["w"]
        (tensor([0.1200, 0.0000]), tensor([0.1200, 0.0500]))
    """
    C.check_lr(lr)
    if len(etas) != 2 or len(step_sizes) != 2:
        raise ValueError(f"etas and step_sizes must be pairs; got {etas!r}, {step_sizes!r}")
    eta_minus, eta_plus = etas
    if not 0.0 < eta_minus < 1.0 < eta_plus:
        raise ValueError(f"Invalid eta values: {eta_minus}, {eta_plus}")
    lo, hi = step_sizes

    def leaf(gi: Tensor, pi: Tensor, di: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s = torch.sign(gi * pi)
        one = torch.ones_like(di)  # the factors in the step sizes' dtype
        factor = torch.where(s > 0, eta_plus, torch.where(s < 0, eta_minus, one))
        d = torch.clamp(di * factor, lo, hi)
        kept = torch.where(s < 0, torch.zeros_like(gi), gi)  # a flip cancels the step
        return torch.sign(kept) * d, kept, d

    return C.stateful(
        "scale_by_rprop",
        ScaleByRpropState,
        C.per_leaf(leaf),  # (g, prev, step_size) -> (u, prev, step_size), leaf by leaf
        trees=("prev", "step_size"),
        initial=lambda params: {"step_size": _initial_step_size(lr, params)},
        hands_on_fresh=True,
    )
