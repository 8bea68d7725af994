"""Parameter averaging: the running (Polyak–Ruppert) average of the iterates, kept in the state.

:func:`average_params` is the last block of a chain: it sees the params and
the final updates, so it averages the *new* params ``θ + u`` exactly as
:func:`fdl.optim.apply_updates` computes them. :func:`averaged_params` reads
the average back out of any state that holds one (ASGD's ``ax``).
:func:`asgd_eta` and :func:`asgd_mu` are ASGD's step-size and averaging
schedules, functions of the step count like every schedule in fdl.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fdl.optim import _common as C
from fdl.optim import _foreach as F
from fdl.optim.base import GradientTransformation, Params, ScalarOrSchedule

__all__ = ["AverageParamsState", "asgd_eta", "asgd_mu", "average_params", "averaged_params"]

Tensor = torch.Tensor


def asgd_eta(lr: ScalarOrSchedule, lambd: float, alpha: float) -> Callable[[Tensor], Tensor]:
    r"""ASGD's step size as a schedule of the step count, as ``torch.optim.ASGD`` updates it.

    .. math::
        \eta(0) = \gamma_0, \qquad
        \eta(c) = \frac{\gamma_{c-1}}{(1 + \lambda\, \gamma_{c-1}\, c)^{\alpha}} \quad (c \ge 1)

    where ``c`` is the number of updates already applied and ``γ_c`` the
    learning rate at count ``c`` (``lr`` itself unless it is a schedule): torch
    computes the step size of step ``c + 1`` at the end of step ``c``, from that
    step's ``lr``.

    Example:
        >>> import torch
        >>> eta = asgd_eta(0.1, lambd=1.0, alpha=1.0)
        >>> [round(float(eta(torch.tensor(c))), 6) for c in range(3)]
        [0.1, 0.090909, 0.083333]
    """

    def schedule(count: Tensor) -> Tensor:
        c = count.to(torch.float64)
        prev = torch.clamp(count - 1, min=0)
        gamma = torch.as_tensor(lr(prev) if callable(lr) else lr, dtype=torch.float64)
        return gamma / (1.0 + lambd * gamma * c) ** alpha

    return schedule


def asgd_mu(t0: float) -> Callable[[Tensor], Tensor]:
    r"""ASGD's averaging weight as a schedule of the step count ``c``.

    .. math::
        \mu(0) = 1, \qquad \mu(c) = \frac{1}{\max(1,\ c - t_0)} \quad (c \ge 1)

    so the average is the plain iterate until ``c > t_0 + 1`` and the mean of the
    iterates since then.

    Example:
        >>> import torch
        >>> mu = asgd_mu(t0=2.0)
        >>> [float(mu(torch.tensor(c))) for c in range(6)]
        [1.0, 1.0, 1.0, 1.0, 0.5, 0.3333333333333333]
    """

    def schedule(count: Tensor) -> Tensor:
        c = count.to(torch.float64)
        later = 1.0 / torch.clamp(c - t0, min=1.0)
        return torch.where(count == 0, torch.ones_like(c), later)

    return schedule


class AverageParamsState(NamedTuple):
    """State of :func:`average_params`: count and the average ``ax`` of the iterates."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    ax: Any


def average_params(mu: Callable[[Tensor], Tensor]) -> GradientTransformation:
    r"""Keep the running average of the new params; the updates pass unchanged.

    .. math::
        \theta' = \theta + u, \qquad
        a_t = \begin{cases} \theta' & \mu_t = 1 \\ a_{t-1} + \mu_t\,(\theta' - a_{t-1})
        & \text{otherwise} \end{cases}

    with ``μ_t = mu(count)``. Place it last in a chain, after the learning rate,
    so that ``θ'`` are the params :func:`fdl.optim.apply_updates` returns.

    Args:
        mu: the averaging weight, a function of the step count (e.g. :func:`asgd_mu`).

    Returns:
        A transformation with :class:`AverageParamsState` (``init`` sets ``ax = 0``).

    Example:
        >>> import torch, fdl
        >>> tx = fdl.optim.chain(fdl.optim.scale(-1.0), average_params(lambda c: 1.0 / (c + 1)))
        >>> p = {"w": torch.tensor([4.0])}
        >>> s = tx.init(p)
        >>> for _ in range(2):
        ...     u, s = tx.update({"w": torch.tensor([2.0])}, s, p)
        ...     p = fdl.optim.apply_updates(p, u)
        >>> p["w"], averaged_params(s)["w"]  # iterates 2 and 0: their mean is 1
        (tensor([0.]), tensor([1.]))
    """

    def step(g: list[Tensor], state: AverageParamsState, ax: list[Tensor], params: Any) -> Any:
        weight = torch.as_tensor(mu(state.count), dtype=torch.float64)
        plain = weight == 1.0
        new_ax = []
        for new, ai in zip(F.add_in_dtype(params, g), ax, strict=True):  # θ' as apply_updates
            new_ax.append(torch.where(plain, new, ai + (new - ai) * weight.to(ai.dtype)))
        return g, {"ax": new_ax}

    return C.stateful("average_params", AverageParamsState, step, trees=("ax",), needs_params=True)


def averaged_params(state: Any) -> Params:
    """The averaged params ``ax`` held in an optimizer state (e.g. :func:`fdl.optim.asgd`'s).

    Searches the state (a chain's tuple, nested wrappers) for the one
    :class:`AverageParamsState` and returns its ``ax`` tree.

    Raises:
        ValueError: when the state holds no average, or more than one.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.asgd(lr=0.1)
        >>> p = {"w": torch.ones(2)}
        >>> u, s = opt.update({"w": torch.ones(2)}, opt.init(p), p)
        >>> averaged_params(s)  # t0 = 1e6: so far the last iterate
        {'w': tensor([0.9000, 0.9000])}
    """
    found: list[AverageParamsState] = []

    def walk(node: Any) -> None:
        if isinstance(node, AverageParamsState):
            found.append(node)
        elif isinstance(node, tuple):
            for child in node:
                walk(child)

    walk(state)
    if len(found) != 1:
        raise ValueError(
            f"averaged_params: the state holds {len(found)} AverageParamsState "
            "(expected one, as asgd's state does)"
        )
    return found[0].ax
