r"""Learning-rate schedules mirroring ``torch.optim.lr_scheduler``.

A schedule is a callable from the step-count tensor to the learning rate (a
float64 scalar tensor). Pass it as the ``lr`` of any optimizer::

    opt = fdl.optim.adam(lr=fdl.optim.schedules.CosineAnnealingLR(1e-3, T_max=100))

Each class takes the base learning rate first (torch reads it from the
optimizer) followed by the torch scheduler's own arguments, with torch's names
and defaults.

**Step convention.** ``count`` is the number of optimizer updates already
applied: the schedule receives 0 at the first update, 1 at the second, ...
``schedule(k)`` equals the learning rate torch's optimizer uses at its ``k``-th
``opt.step()`` (0-based) in the loop ``for k in range(n): opt.step();
sched.step()``, i.e. ``sched.get_last_lr()`` after ``k`` calls of
``sched.step()``. So a schedule plus an fdl optimizer reproduce that loop
exactly. (To step a schedule per epoch instead, pass ``lambda c:
sched(c // steps_per_epoch)``.)

The values are computed in closed form from ``count``, so they are tensors
inside a compiled step and never cause a recompile. Torch computes most
schedules recursively (``lr_t = f(lr_{t-1})``); the two agree to rounding.

Example:
    >>> import torch
    >>> s = StepLR(0.1, step_size=2, gamma=0.5)
    >>> [round(float(s(torch.tensor(k))), 4) for k in range(5)]
    [0.1, 0.1, 0.05, 0.05, 0.025]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

__all__ = [
    "ChainedScheduler",
    "ConstantLR",
    "CosineAnnealingLR",
    "CosineAnnealingWarmRestarts",
    "CyclicLR",
    "ExponentialLR",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "MultiplicativeLR",
    "OneCycleLR",
    "PlateauState",
    "PolynomialLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
]

Tensor = torch.Tensor


def _f64(count: Tensor | int) -> Tensor:
    return torch.as_tensor(count).to(torch.float64)


def _check_lr(lr: float) -> None:
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")


@dataclass(frozen=True)
class _BaseLR:
    """What the schedules of one base rate share: their first field ``lr``, checked ``>= 0``."""

    lr: float

    def __post_init__(self) -> None:
        _check_lr(self.lr)


@dataclass(frozen=True)
class StepLR(_BaseLR):
    r"""Decay by ``gamma`` every ``step_size`` steps.

    :math:`\eta_k = \eta\,\gamma^{\lfloor k/s \rfloor}` with ``s = step_size``.

    Mirrors ``torch.optim.lr_scheduler.StepLR(opt, step_size, gamma=0.1)``.

    Example:
        >>> import torch
        >>> float(StepLR(1.0, step_size=3)(torch.tensor(3)))
        0.1
    """

    step_size: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.step_size, int) or self.step_size < 1:
            raise ValueError(f"step_size must be a positive int; got {self.step_size!r}")

    def __call__(self, count: Tensor) -> Tensor:
        k = torch.div(torch.as_tensor(count), self.step_size, rounding_mode="floor")
        return self.lr * self.gamma ** _f64(k)


@dataclass(frozen=True)
class MultiStepLR(_BaseLR):
    r"""Decay by ``gamma`` at each milestone: :math:`\eta_k = \eta\,\gamma^{|\{m_i \le k\}|}`.

    A milestone listed twice decays twice, as in torch. Mirrors
    ``torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)``.

    Example:
        >>> import torch
        >>> s = MultiStepLR(1.0, milestones=[2, 4], gamma=0.5)
        >>> [float(s(torch.tensor(k))) for k in range(6)]
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """

    milestones: Sequence[int]
    gamma: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "milestones", tuple(sorted(int(m) for m in self.milestones)))

    def __call__(self, count: Tensor) -> Tensor:
        count = torch.as_tensor(count)
        n = torch.zeros((), dtype=torch.float64, device=count.device)
        for m in self.milestones:
            n = n + (count >= m).to(torch.float64)
        return self.lr * self.gamma**n


@dataclass(frozen=True)
class ExponentialLR(_BaseLR):
    r"""Decay by ``gamma`` every step: :math:`\eta_k = \eta\,\gamma^k`.

    Mirrors ``torch.optim.lr_scheduler.ExponentialLR(opt, gamma)``.

    Example:
        >>> import torch
        >>> float(ExponentialLR(1.0, gamma=0.5)(torch.tensor(3)))
        0.125
    """

    gamma: float

    def __call__(self, count: Tensor) -> Tensor:
        return self.lr * self.gamma ** _f64(count)


@dataclass(frozen=True)
class CosineAnnealingLR(_BaseLR):
    r"""Cosine annealing from ``lr`` to ``eta_min`` over ``T_max`` steps.

    :math:`\eta_k = \eta_{min} + (\eta - \eta_{min})\frac{1 + \cos(\pi k / T_{max})}{2}`.

    Past ``T_max`` the cosine continues (the rate rises again), as torch's does.
    Mirrors ``torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max, eta_min=0.0)``.

    Example:
        >>> import torch
        >>> s = CosineAnnealingLR(1.0, T_max=2)
        >>> [round(float(s(torch.tensor(k))), 6) for k in range(3)]
        [1.0, 0.5, 0.0]
    """

    T_max: int
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.T_max > 0:
            raise ValueError(f"T_max must be positive; got {self.T_max!r}")

    def __call__(self, count: Tensor) -> Tensor:
        cos = torch.cos(math.pi * _f64(count) / self.T_max)
        return self.eta_min + (self.lr - self.eta_min) * (1.0 + cos) / 2.0


@dataclass(frozen=True)
class CosineAnnealingWarmRestarts(_BaseLR):
    r"""SGDR: cosine annealing restarted after ``T_0``, ``T_0·T_mult``, ... steps.

    .. math::
        \eta_k = \eta_{min} + (\eta - \eta_{min})\frac{1 + \cos(\pi T_{cur} / T_i)}{2}

    where the current period ``T_i = T_0 T_mult^n`` and ``T_cur`` the steps since
    it began, found with exact integer arithmetic (no logarithms). Mirrors
    ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0, T_mult=1,
    eta_min=0.0)`` stepped once per update.

    Example:
        >>> import torch
        >>> s = CosineAnnealingWarmRestarts(1.0, T_0=2)
        >>> [round(float(s(torch.tensor(k))), 6) for k in range(4)]
        [1.0, 0.5, 1.0, 0.5]
    """

    T_0: int
    T_mult: int = 1
    eta_min: float = 0.0
    _starts: tuple[int, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.T_0, int) or self.T_0 <= 0:
            raise ValueError(f"Expected positive integer T_0, but got {self.T_0}")
        if not isinstance(self.T_mult, int) or self.T_mult < 1:
            raise ValueError(f"Expected integer T_mult >= 1, but got {self.T_mult}")
        starts = [0]
        period = self.T_0
        while self.T_mult > 1 and starts[-1] < 2**40:
            starts.append(starts[-1] + period)
            period *= self.T_mult
        object.__setattr__(self, "_starts", tuple(starts))

    def __call__(self, count: Tensor) -> Tensor:
        count = torch.as_tensor(count)
        if self.T_mult == 1:
            t_cur = _f64(torch.remainder(count, self.T_0))
            t_i: float | Tensor = float(self.T_0)
        else:
            n = torch.zeros((), dtype=torch.float64, device=count.device)
            start = torch.zeros((), dtype=torch.float64, device=count.device)
            for prev, s in zip(self._starts[:-1], self._starts[1:], strict=True):
                passed = (count >= s).to(torch.float64)
                n = n + passed
                start = start + passed * (s - prev)
            t_cur = _f64(count) - start
            t_i = self.T_0 * float(self.T_mult) ** n
        cos = torch.cos(math.pi * t_cur / t_i)
        return self.eta_min + (self.lr - self.eta_min) * (1.0 + cos) / 2.0


@dataclass(frozen=True)
class LinearLR(_BaseLR):
    r"""Linear ramp of the factor from ``start_factor`` to ``end_factor`` over ``total_iters``.

    :math:`\eta_k = \eta\,\big(f_s + (f_e - f_s)\min(k, N)/N\big)`. Mirrors
    ``torch.optim.lr_scheduler.LinearLR(opt, start_factor=1/3, end_factor=1.0,
    total_iters=5)``: the usual warm-up.

    Example:
        >>> import torch
        >>> s = LinearLR(1.0, start_factor=0.5, total_iters=2)
        >>> [float(s(torch.tensor(k))) for k in range(4)]
        [0.5, 0.75, 1.0, 1.0]
    """

    start_factor: float = 1.0 / 3
    end_factor: float = 1.0
    total_iters: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.start_factor > 1.0 or self.start_factor <= 0:
            raise ValueError(
                "Starting multiplicative factor expected to be greater than 0 and less or "
                f"equal to 1; got {self.start_factor}"
            )
        if self.end_factor > 1.0 or self.end_factor < 0:
            raise ValueError(
                "Ending multiplicative factor expected to be between 0 and 1; "
                f"got {self.end_factor}"
            )

    def __call__(self, count: Tensor) -> Tensor:
        k = torch.clamp(_f64(count), max=float(self.total_iters))
        span = self.end_factor - self.start_factor
        return self.lr * (self.start_factor + span * k / self.total_iters)


@dataclass(frozen=True)
class ConstantLR(_BaseLR):
    r"""Scale by ``factor`` for the first ``total_iters`` steps.

    :math:`\eta_k = \eta f` for :math:`k < N`, else :math:`\eta`.

    Mirrors ``torch.optim.lr_scheduler.ConstantLR(opt, factor=1/3, total_iters=5)``.

    Example:
        >>> import torch
        >>> s = ConstantLR(1.0, factor=0.5, total_iters=1)
        >>> [float(s(torch.tensor(k))) for k in range(3)]
        [0.5, 1.0, 1.0]
    """

    factor: float = 1.0 / 3
    total_iters: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor > 1.0 or self.factor < 0:
            raise ValueError(
                f"Constant multiplicative factor expected to be between 0 and 1; got {self.factor}"
            )

    def __call__(self, count: Tensor) -> Tensor:
        after = (torch.as_tensor(count) >= self.total_iters).to(torch.float64)
        return self.lr * (self.factor + after * (1.0 - self.factor))


@dataclass(frozen=True)
class PolynomialLR(_BaseLR):
    r"""Polynomial decay to zero: :math:`\eta_k = \eta\,(1 - \min(k, N)/N)^p`.

    Mirrors ``torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=5, power=1.0)``.

    Example:
        >>> import torch
        >>> s = PolynomialLR(1.0, total_iters=2, power=2.0)
        >>> [float(s(torch.tensor(k))) for k in range(3)]
        [1.0, 0.25, 0.0]
    """

    total_iters: int = 5
    power: float = 1.0

    def __call__(self, count: Tensor) -> Tensor:
        k = torch.clamp(_f64(count), max=float(self.total_iters))
        return self.lr * (1.0 - k / self.total_iters) ** self.power


@dataclass(frozen=True)
class LambdaLR:
    r"""The base rate times a function of the step count: :math:`\eta_k = \eta\,f(k)`.

    ``lr_lambda`` receives the count as a float64 **tensor** (so arithmetic on
    it stays in float64) and must use tensor ops to trace under
    ``torch.compile``. Mirrors
    ``torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)``.

    Example:
        >>> import torch
        >>> float(LambdaLR(2.0, lambda k: 0.5 ** k)(torch.tensor(2)))
        0.5
    """

    lr: float
    lr_lambda: Callable[[Tensor], Tensor | float]

    def __call__(self, count: Tensor) -> Tensor:
        return self.lr * torch.as_tensor(self.lr_lambda(_f64(count)), dtype=torch.float64)


@dataclass(frozen=True)
class OneCycleLR:
    r"""The 1cycle policy (Smith & Topin, 2018): warm up to ``max_lr``, then anneal far below.

    Phases (two-phase default): from ``η_0 = max_lr / div_factor`` up to
    ``max_lr`` over steps ``[0, pct_start·T - 1]``, then down to
    ``η_min = η_0 / final_div_factor`` at step ``T - 1``; with ``three_phase``
    the second phase returns to ``η_0`` at ``2·pct_start·T - 2`` and the third
    anneals to ``η_min``. Within a phase from ``a`` to ``b`` at fraction ``p``:

    .. math::
        \text{cos: } b + \frac{a - b}{2}(1 + \cos \pi p), \qquad \text{linear: } a + (b - a)\,p

    Mirrors ``torch.optim.lr_scheduler.OneCycleLR``. Called on the count, it is
    the learning rate. ``s.momentum`` is the cycled momentum, annealed the
    other way between ``max_momentum`` and ``base_momentum`` with the same phases
    (``max → base`` while the rate rises, then back): pass it as ``sgd``'s
    ``momentum`` or as ``adam``/``adamw``'s first beta to reproduce torch's
    default ``cycle_momentum=True``. Without it the momentum stays fixed, as
    torch's ``cycle_momentum=False``. Where torch raises after ``total_steps``
    steps, fdl holds the value of step ``total_steps``.

    Example:
        >>> import torch, fdl
        >>> s = OneCycleLR(1.0, total_steps=10)
        >>> round(float(s(torch.tensor(0))), 6), round(float(s(torch.tensor(2))), 6)
        (0.04, 1.0)
        >>> [round(float(s.momentum(torch.tensor(k))), 6) for k in (0, 2)]
        [0.95, 0.85]
        >>> opt = fdl.optim.sgd(lr=s, momentum=s.momentum)  # torch's cycle_momentum=True
    """

    max_lr: float
    total_steps: int | None = None
    epochs: int | None = None
    steps_per_epoch: int | None = None
    pct_start: float = 0.3
    anneal_strategy: str = "cos"
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    three_phase: bool = False
    base_momentum: float = 0.85
    max_momentum: float = 0.95

    def __post_init__(self) -> None:
        _check_lr(self.max_lr)
        if self.total_steps is None:
            if self.epochs is None or self.steps_per_epoch is None:
                raise ValueError(
                    "You must define either total_steps OR (epochs AND steps_per_epoch)"
                )
            if self.epochs <= 0 or self.steps_per_epoch <= 0:
                raise ValueError(
                    f"epochs and steps_per_epoch must be positive; got {self.epochs}, "
                    f"{self.steps_per_epoch}"
                )
            object.__setattr__(self, "total_steps", self.epochs * self.steps_per_epoch)
        elif self.total_steps <= 0:
            raise ValueError(f"Expected positive integer total_steps, but got {self.total_steps}")
        if not 0.0 <= self.pct_start <= 1.0:
            raise ValueError(f"Expected float between 0 and 1 pct_start, but got {self.pct_start}")
        if self.anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"anneal_strategy must be one of 'cos' or 'linear', got {self.anneal_strategy}"
            )

    def _phases(self, momentum: bool = False) -> list[tuple[float, float, float]]:
        """(end_step, start, end) of each phase, as torch builds them, for the rate or momentum."""
        T = float(self.total_steps)  # type: ignore[arg-type]
        initial = self.max_lr / self.div_factor
        minimum = initial / self.final_div_factor
        lo, hi = self.base_momentum, self.max_momentum
        if self.three_phase:
            ends = [self.pct_start * T - 1, 2 * self.pct_start * T - 2, T - 1]
            values = (
                [(hi, lo), (lo, hi), (hi, hi)]
                if momentum
                else [
                    (initial, self.max_lr),
                    (self.max_lr, initial),
                    (initial, minimum),
                ]
            )
        else:
            ends = [self.pct_start * T - 1, T - 1]
            values = (
                [(hi, lo), (lo, hi)]
                if momentum
                else [
                    (initial, self.max_lr),
                    (self.max_lr, minimum),
                ]
            )
        return [(e, a, b) for e, (a, b) in zip(ends, values, strict=True)]

    def _anneal(self, count: Tensor, phases: list[tuple[float, float, float]]) -> Tensor:
        k = torch.clamp(_f64(count), max=float(self.total_steps))  # type: ignore[arg-type]
        start_step = 0.0
        values = []
        for end_step, a, b in phases:
            pct = (k - start_step) / (end_step - start_step)
            if self.anneal_strategy == "cos":
                values.append(b + (a - b) / 2.0 * (torch.cos(math.pi * pct) + 1.0))
            else:
                values.append((b - a) * pct + a)
            start_step = end_step
        out = values[-1]
        for (end_step, _, _), v in zip(reversed(phases[:-1]), reversed(values[:-1]), strict=True):
            out = torch.where(k <= end_step, v, out)
        return out

    def __call__(self, count: Tensor) -> Tensor:
        return self._anneal(count, self._phases())

    def momentum(self, count: Tensor) -> Tensor:
        """The cycled momentum (``sgd``'s ``momentum``, ``adam``'s first beta) at ``count``."""
        return self._anneal(count, self._phases(momentum=True))


@dataclass(frozen=True)
class SequentialLR:
    r"""Run ``schedules[i]`` from ``milestones[i-1]`` on, each restarted at its milestone.

    :math:`\eta_k = s_i(k - m_{i})` for :math:`m_i \le k < m_{i+1}` (with
    :math:`m_0 = 0`): the join used for warm-up, e.g.
    ``SequentialLR([LinearLR(lr, 0.1, total_iters=5), CosineAnnealingLR(lr, 95)], [5])``.
    Mirrors ``torch.optim.lr_scheduler.SequentialLR(opt, schedulers, milestones)``.

    Example:
        >>> import torch
        >>> s = SequentialLR([ConstantLR(1.0, 0.1, 2), ExponentialLR(1.0, 0.5)], milestones=[2])
        >>> [float(s(torch.tensor(k))) for k in range(4)]
        [0.1, 0.1, 1.0, 0.5]
    """

    schedules: Sequence[Callable[[Tensor], Tensor]]
    milestones: Sequence[int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedules", tuple(self.schedules))
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if len(self.schedules) < 1:
            raise ValueError("SequentialLR expects at least one schedule")
        if len(self.milestones) != len(self.schedules) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more than "
                f"the number of milestone points, but got number of schedulers "
                f"{len(self.schedules)} and the number of milestones to be equal to "
                f"{len(self.milestones)}"
            )
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing; got {list(self.milestones)}")

    def __call__(self, count: Tensor) -> Tensor:
        count = torch.as_tensor(count)
        out = torch.as_tensor(self.schedules[0](count), dtype=torch.float64)
        for m, s in zip(self.milestones, self.schedules[1:], strict=True):
            out = torch.where(count >= m, torch.as_tensor(s(count - m), dtype=torch.float64), out)
        return out


@dataclass(frozen=True)
class MultiplicativeLR(_BaseLR):
    r"""The rate multiplied by ``lr_lambda(k)`` at every step ``k >= 1``.

    :math:`\eta_k = \eta \prod_{j=1}^{k} f(j)`, the product taken in torch's
    order (:math:`\eta_k = \eta_{k-1} f(k)`). ``lr_lambda`` is called with
    Python ints, as torch's is, once per step up to ``total_steps`` when the
    schedule is built; the schedule then looks the rate up, so any Python
    function works and a compiled step never recompiles. Mirrors
    ``torch.optim.lr_scheduler.MultiplicativeLR(opt, lr_lambda)``.

    Note:
        ``total_steps`` (an fdl argument, default 10000) bounds the table:
        past it the rate holds at :math:`\eta_{total\_steps}`.

    Example:
        >>> import torch
        >>> s = MultiplicativeLR(1.0, lambda k: 0.5, total_steps=10)
        >>> [float(s(torch.tensor(k))) for k in range(4)]
        [1.0, 0.5, 0.25, 0.125]
    """

    lr_lambda: Callable[[int], float]
    total_steps: int = 10_000
    _table: Tensor = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.total_steps, int) or self.total_steps < 0:
            raise ValueError(f"total_steps must be an int >= 0; got {self.total_steps!r}")
        values = [float(self.lr)]
        for k in range(1, self.total_steps + 1):
            values.append(values[-1] * float(self.lr_lambda(k)))
        object.__setattr__(self, "_table", torch.tensor(values, dtype=torch.float64))

    def __call__(self, count: Tensor) -> Tensor:
        count = torch.as_tensor(count)
        k = torch.clamp(count, 0, self.total_steps).to(torch.int64)
        return torch.take(self._table.to(count.device), k)  # elementwise lookup, any shape


@dataclass(frozen=True)
class CyclicLR:
    r"""Cyclical learning rate (Smith, 2017): between ``base_lr`` and ``max_lr`` in triangles.

    With cycle length ``T = step_size_up + step_size_down`` and
    ``r = step_size_up / T``:

    .. math::
        c = \lfloor 1 + k/T \rfloor,\quad x = 1 + k/T - c,\quad
        h = \begin{cases} x / r & x \le r \\ (x - 1)/(r - 1) & x > r\end{cases},\quad
        \eta_k = \eta_{base} + (\eta_{max} - \eta_{base})\, h\, \sigma

    where :math:`\sigma` is the scale: ``triangular`` 1, ``triangular2``
    :math:`1/2^{c-1}` (of the cycle), ``exp_range`` :math:`\gamma^k` (of the
    step), or ``scale_fn`` of the cycle (``scale_mode='cycle'``) or of the step
    (``'iterations'``). ``scale_fn`` receives a float64 tensor and must use
    tensor ops to trace under ``torch.compile``.

    ``s.momentum`` is the cycled momentum, torch's default
    ``cycle_momentum=True``: :math:`m_k = m_{max} - (m_{max} - m_{base})\,h\,\sigma`,
    to pass as ``sgd``'s ``momentum`` or ``adam``'s first beta. With
    ``cycle_momentum=False`` there is none (the optimizer's own stays fixed).
    Mirrors ``torch.optim.lr_scheduler.CyclicLR(opt, base_lr, max_lr, ...)``,
    stepped once per update.

    Example:
        >>> import torch
        >>> s = CyclicLR(0.1, 1.0, step_size_up=2)
        >>> [round(float(s(torch.tensor(k))), 6) for k in range(5)]
        [0.1, 0.55, 1.0, 0.55, 0.1]
        >>> [round(float(s.momentum(torch.tensor(k))), 6) for k in range(3)]
        [0.9, 0.85, 0.8]
    """

    base_lr: float
    max_lr: float
    step_size_up: int = 2000
    step_size_down: int | None = None
    mode: str = "triangular"
    gamma: float = 1.0
    scale_fn: Callable[[Tensor], Tensor | float] | None = None
    scale_mode: str = "cycle"
    cycle_momentum: bool = True
    base_momentum: float = 0.8
    max_momentum: float = 0.9

    def __post_init__(self) -> None:
        _check_lr(self.base_lr)
        _check_lr(self.max_lr)
        if self.scale_fn is None:
            if self.mode not in ("triangular", "triangular2", "exp_range"):
                raise ValueError("mode is invalid and scale_fn is None")
            scale_mode = "iterations" if self.mode == "exp_range" else "cycle"
            object.__setattr__(self, "scale_mode", scale_mode)
        elif self.scale_mode not in ("cycle", "iterations"):
            raise ValueError(f"scale_mode must be 'cycle' or 'iterations'; got {self.scale_mode!r}")
        up = float(self.step_size_up)
        down = float(self.step_size_down) if self.step_size_down is not None else up
        if not (up > 0 and down >= 0):
            raise ValueError(
                f"step_size_up must be positive and step_size_down >= 0; got {up}, {down}"
            )

    def _sizes(self) -> tuple[float, float]:
        up = float(self.step_size_up)
        down = float(self.step_size_down) if self.step_size_down is not None else up
        return up + down, up / (up + down)

    def _scale(self, cycle: Tensor, k: Tensor) -> Tensor:
        x = cycle if self.scale_mode == "cycle" else k
        if self.scale_fn is not None:
            return torch.as_tensor(self.scale_fn(x), dtype=torch.float64)
        if self.mode == "triangular":
            return torch.ones_like(x)
        if self.mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return self.gamma**x

    def _height(self, count: Tensor) -> Tensor:
        """``h σ``: the position in the triangle times the scale."""
        total, ratio = self._sizes()
        k = _f64(count)
        cycle = torch.floor(1 + k / total)
        x = 1.0 + k / total - cycle
        h = torch.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
        return h * self._scale(cycle, k)

    def __call__(self, count: Tensor) -> Tensor:
        return self.base_lr + (self.max_lr - self.base_lr) * self._height(count)

    def momentum(self, count: Tensor) -> Tensor:
        """The cycled momentum (``sgd``'s ``momentum``, ``adam``'s first beta) at ``count``."""
        if not self.cycle_momentum:
            raise ValueError("CyclicLR(cycle_momentum=False) has no cycled momentum")
        return self.max_momentum - (self.max_momentum - self.base_momentum) * self._height(count)


@dataclass(frozen=True)
class ChainedScheduler:
    r"""Several schedules of one base rate applied together: their factors multiply.

    :math:`\eta_k = \eta \prod_i s_i(k) / \eta`, each :math:`s_i` built with the
    same base rate :math:`\eta` (its ``lr``). torch's ``ChainedScheduler`` steps
    each scheduler on the rate the previous one left, which is this product for
    the schedules whose torch recursion multiplies the current rate:
    ``StepLR``, ``MultiStepLR``, ``ExponentialLR``, ``ConstantLR``,
    ``LinearLR``, ``PolynomialLR``, ``MultiplicativeLR`` (any mix of them; the
    others set the rate from the step alone, so a torch chain of them depends
    on their order). Mirrors
    ``torch.optim.lr_scheduler.ChainedScheduler(schedulers)``.

    Example:
        >>> import torch
        >>> s = ChainedScheduler([ConstantLR(1.0, 0.1, 2), ExponentialLR(1.0, 0.5)])
        >>> [round(float(s(torch.tensor(k))), 6) for k in range(4)]
        [0.1, 0.05, 0.25, 0.125]
    """

    schedules: Sequence[Callable[[Tensor], Tensor]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedules", tuple(self.schedules))
        if len(self.schedules) < 1:
            raise ValueError(
                "ChainedScheduler expects at least one scheduler to be chained, but got no "
                "scheduler."
            )
        bases = []
        for i, s in enumerate(self.schedules):
            if isinstance(s, ReduceLROnPlateau):
                raise ValueError(
                    "ChainedScheduler does not support ReduceLROnPlateau (it is fed a metric), "
                    f"but got one at index {i}"
                )
            base = getattr(s, "lr", None)
            if not isinstance(base, (int, float)):
                raise TypeError(
                    f"ChainedScheduler: the schedule at index {i} ({type(s).__name__}) has no "
                    "base rate `lr`"
                )
            bases.append(float(base))
        if any(b != bases[0] for b in bases):
            raise ValueError(
                f"ChainedScheduler expects schedules of one base rate (one optimizer); got {bases}"
            )

    @property
    def lr(self) -> float:
        """The common base rate."""
        return float(self.schedules[0].lr)  # type: ignore[attr-defined]

    def __call__(self, count: Tensor) -> Tensor:
        out = torch.as_tensor(self.schedules[0](count), dtype=torch.float64)
        for s in self.schedules[1:]:
            out = out * (torch.as_tensor(s(count), dtype=torch.float64) / self.lr)
        return out


class PlateauState(NamedTuple):
    """The state of :class:`ReduceLROnPlateau`: torch's scheduler attributes as tensors.

    Attributes:
        lr: the current learning rate (float64).
        best: the best metric so far (float64; ``inf`` / ``-inf`` before the first).
        num_bad_epochs: updates since the last improvement (int64).
        cooldown_counter: updates of cooldown left (int64).
    """

    lr: Tensor
    best: Tensor
    num_bad_epochs: Tensor
    cooldown_counter: Tensor


@dataclass(frozen=True)
class ReduceLROnPlateau(_BaseLR):
    r"""Multiply the rate by ``factor`` when a metric stops improving: a schedule fed the metric.

    ``state = plateau.init()``, then once per epoch
    ``state = plateau.update(state, metric)`` and ``plateau.get_last_lr(state)``
    (``= state.lr``). The metric improves when it beats ``best`` by the
    threshold: ``mode='min'`` needs :math:`m < b(1 - \tau)` (``rel``) or
    :math:`m < b - \tau` (``abs``); ``'max'`` :math:`m > b(1 + \tau)` or
    :math:`m > b + \tau`. An update then

    .. math::
        &\text{improved: } b \leftarrow m,\ n_{bad} \leftarrow 0;
        \ \text{else } n_{bad} \leftarrow n_{bad} + 1 \\
        &\text{in cooldown } (c > 0)\text{: } c \leftarrow c - 1,\ n_{bad} \leftarrow 0 \\
        &n_{bad} > \text{patience}:\ \eta \leftarrow \max(\eta f, \eta_{min})
        \text{ if the drop exceeds eps},\ c \leftarrow \text{cooldown},\ n_{bad} \leftarrow 0

    Every branch is a ``torch.where`` on tensors, so a compiled update traces
    once whatever the metric does. To train with it, build the optimizer with
    ``lr=1.0`` and scale its updates (every fdl optimizer's update is linear in
    ``lr``): ``updates = fdl.tree.scale(updates, plateau.get_last_lr(state))``.
    Mirrors ``torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode='min',
    factor=0.1, patience=10, threshold=1e-4, threshold_mode='rel', cooldown=0,
    min_lr=0, eps=1e-8)`` for one parameter group.

    Example:
        >>> import torch
        >>> plateau = ReduceLROnPlateau(1.0, factor=0.5, patience=1)
        >>> state = plateau.init()
        >>> for metric in [3.0, 2.0, 2.0, 2.0, 2.0, 2.0]:
        ...     state = plateau.update(state, torch.tensor(metric))
        ...     print(float(plateau.get_last_lr(state)), end=" ")
        1.0 1.0 1.0 0.5 0.5 0.25
    """

    mode: str = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"
    cooldown: int = 0
    min_lr: float = 0.0
    eps: float = 1e-8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor >= 1.0:
            raise ValueError("Factor should be < 1.0.")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode {self.mode} is unknown!")
        if self.threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold mode {self.threshold_mode} is unknown!")
        if isinstance(self.min_lr, (list, tuple)):
            raise ValueError("ReduceLROnPlateau: min_lr is one float (one parameter group)")

    def init(self, device: torch.device | str | None = None) -> PlateauState:
        """The state before the first metric: ``best = ±inf``, counters 0, the base rate."""
        worse = math.inf if self.mode == "min" else -math.inf
        f64, i64 = torch.float64, torch.int64
        return PlateauState(
            lr=torch.tensor(float(self.lr), dtype=f64, device=device),
            best=torch.tensor(worse, dtype=f64, device=device),
            num_bad_epochs=torch.zeros((), dtype=i64, device=device),
            cooldown_counter=torch.zeros((), dtype=i64, device=device),
        )

    def _is_better(self, a: Tensor, best: Tensor) -> Tensor:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def update(self, state: PlateauState, metric: Tensor | float) -> PlateauState:
        """The state after one epoch with this ``metric`` (pure; see the class formulas)."""
        current = torch.as_tensor(metric, dtype=torch.float64, device=state.best.device)
        better = self._is_better(current, state.best)
        best = torch.where(better, current, state.best)
        bad = torch.where(better, 0, state.num_bad_epochs + 1)
        in_cooldown = state.cooldown_counter > 0
        cooldown = torch.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
        bad = torch.where(in_cooldown, 0, bad)
        reduce = bad > self.patience
        new_lr = torch.clamp(state.lr * self.factor, min=self.min_lr)
        lr = torch.where(reduce & (state.lr - new_lr > self.eps), new_lr, state.lr)
        cooldown = torch.where(reduce, self.cooldown, cooldown)
        bad = torch.where(reduce, 0, bad)
        return PlateauState(lr, best, bad, cooldown)

    def get_last_lr(self, state: PlateauState) -> Tensor:
        """The current learning rate, ``state.lr`` (torch's ``get_last_lr()[0]``)."""
        return state.lr
