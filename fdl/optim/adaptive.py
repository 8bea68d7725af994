"""Adaptive scalings: Adam and its family, RMSprop, Adagrad, Adadelta.

Each block is its formula written with two helpers, as in Optax:
:func:`_update_moment` (an exponential moving average of ``g`` or ``g²``) and
:func:`_bias_correction` (``1 - β^t``). ``g`` is the incoming update, ``t`` the
1-based step number (``count + 1``). The rules follow ``torch.optim`` (eps
placement, first-step values), which is where they differ from Optax; each
docstring says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fdl import tree
from fdl.optim import _common as C
from fdl.optim import _foreach as F
from fdl.optim.base import GradientTransformation, Params

__all__ = [
    "ScaleByAdadeltaState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByNadamState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
]

Tensor = torch.Tensor
Leaves = list[Tensor]


def _update_moment(g: Leaves, m: Leaves, decay: Any, order: int) -> Leaves:
    r"""The moving average of the ``order``-th power of ``g``: :math:`\beta m + (1-\beta) g^k`."""
    return F.ema(m, g, decay) if order == 1 else F.ema_of_squares(m, g, decay)


def _bias_correction(decay: Any, t: Tensor) -> Tensor:
    r"""The bias correction of a moving average started at zero: :math:`1 - \beta^t`."""
    return 1.0 - decay**t


class ScaleByAdamState(NamedTuple):
    """State of :func:`scale_by_adam`: count, first moment ``mu``, second moment ``nu``,
    and the running maximum ``nu_max`` of ``nu`` (``None`` unless ``amsgrad``)."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    mu: Any
    nu: Any
    nu_max: Any


def scale_by_adam(
    b1: float | Callable[[Tensor], Tensor] = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    amsgrad: bool = False,
    eps_root: float = 0.0,
) -> GradientTransformation:
    r"""Adam's scaling (Kingma & Ba, 2015), with eps placed as ``torch.optim.Adam`` does.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad
        \hat v_t = \max(\hat v_{t-1}, v_t)\ \text{(amsgrad, else } \hat v_t = v_t)

    .. math::
        u_t = \frac{m_t / (1-\beta_1^t)}
            {\sqrt{\hat v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    Args:
        b1: ``β1``, decay of the first moment: a float, or a schedule of the step
            count (e.g. ``OneCycleLR(...).momentum``); with a schedule, ``β1`` at
            the current step is used in the moment and in ``1 - β1^t``, as torch
            does when a scheduler cycles ``betas[0]``.
        b2: ``β2``, decay of the second moment.
        eps: ``ε``, added to the bias-corrected root second moment (as torch;
            Optax adds it likewise, outside the root).
        amsgrad: keep the running maximum of ``v`` and divide by it.
        eps_root: ``ε_root``, added inside the root (Optax's ``eps_root``; torch has
            none). The derivative of ``sqrt`` at 0 is infinite, so differentiating
            *through* an update (meta-learning) where a gradient entry is 0 gives
            NaN with ``eps_root = 0``; a small ``eps_root > 0`` (e.g. ``1e-16``)
            keeps it finite. With the default 0 the update is torch's, bit for bit.

    Returns:
        A transformation with :class:`ScaleByAdamState`.

    Example:
        >>> import torch
        >>> tx = scale_by_adam()
        >>> u, s = tx.update({"w": torch.tensor([2.0, -3.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]  # the first step is sign(g) up to eps
        tensor([ 1., -1.])
    """
    if not callable(b1):
        C.check_unit_interval("beta1", b1)
    C.check_unit_interval("beta2", b2)
    C.check_nonneg("epsilon", eps)
    C.check_nonneg("eps_root", eps_root)

    def step(g: Leaves, state: ScaleByAdamState, mu: Leaves, nu: Leaves, nu_max: Any) -> Any:
        t = C.step_number(state.count)
        beta1 = C.scheduled(b1, state.count)
        m = _update_moment(g, mu, beta1, order=1)
        v = _update_moment(g, nu, b2, order=2)
        v_max = F.maximum(nu_max, v) if amsgrad else None
        bc1, bc2 = _bias_correction(beta1, t), _bias_correction(b2, t)
        bc2_sqrt = torch.sqrt(bc2)
        v_hat = v_max if amsgrad else v
        if isinstance(eps_root, Tensor) or eps_root:
            # sqrt(v / bc2 + eps_root) = sqrt(v + eps_root * bc2) / sqrt(bc2)
            v_hat = F.shift(v_hat, eps_root * bc2)
        # m̂ / (sqrt(v̂) + eps), the denominator scaled by bc1 so that it takes one division
        u = F.div(m, F.root_affine(v_hat, bc1 / bc2_sqrt, eps * bc1))
        return u, {"mu": m, "nu": v, "nu_max": v_max}

    return C.stateful(
        "scale_by_adam",
        ScaleByAdamState,
        step,
        trees=("mu", "nu", "nu_max"),
        initial=lambda params: {} if amsgrad else {"nu_max": None},
        hands_on_fresh=True,
    )


class ScaleByAdamaxState(C.MomentsState):
    """State of :func:`scale_by_adamax`: count, first moment ``mu``, infinity norm ``nu``."""

    __slots__ = ()


def scale_by_adamax(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    r"""Adamax's scaling, as ``torch.optim.Adamax`` (eps inside the maximum).

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        n_t = \max(\beta_2 n_{t-1},\ |g_t| + \epsilon), \qquad
        u_t = \frac{m_t}{(1-\beta_1^t)\, n_t}

    Args:
        b1: ``β1``. b2: ``β2``. eps: ``ε`` (inside the max; Optax adds it outside).

    Returns:
        A transformation with :class:`ScaleByAdamaxState`.

    Example:
        >>> import torch
        >>> tx = scale_by_adamax()
        >>> tx.update({"w": torch.tensor([-2.0])}, tx.init({"w": torch.zeros(1)}))[0]
        {'w': tensor([-1.])}
    """
    C.check_unit_interval("beta1", b1)
    C.check_unit_interval("beta2", b2)
    C.check_nonneg("epsilon", eps)

    def step(g: Leaves, state: ScaleByAdamaxState, mu: Leaves, nu: Leaves) -> Any:
        m = _update_moment(g, mu, b1, order=1)
        n = F.maximum(F.scale(nu, b2), F.abs_plus(g, eps))
        bc1 = _bias_correction(b1, C.step_number(state.count))
        return F.scale(F.div(m, n), 1.0 / bc1), {"mu": m, "nu": n}

    return C.stateful(
        "scale_by_adamax", ScaleByAdamaxState, step, trees=("mu", "nu"), hands_on_fresh=True
    )


class ScaleByNadamState(NamedTuple):
    """State of :func:`scale_by_nadam`: count, moments, and the product of the momentum
    coefficients ``mu_product`` (a float64 scalar tensor)."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    mu: Any
    nu: Any
    mu_product: Tensor


def scale_by_nadam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, momentum_decay: float = 4e-3
) -> GradientTransformation:
    r"""NAdam's scaling (Dozat, 2016) as ``torch.optim.NAdam`` computes it.

    .. math::
        \mu_t = \beta_1\big(1 - \tfrac12\, 0.96^{t\psi}\big), \quad
        \Pi_t = \prod_{i \le t} \mu_i, \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

    .. math::
        d_t = \sqrt{v_t / (1-\beta_2^t)} + \epsilon, \qquad
        u_t = \frac{1-\mu_t}{1-\Pi_t}\,\frac{g_t}{d_t}
            + \frac{\mu_{t+1}}{1-\Pi_t\,\mu_{t+1}}\,\frac{m_t}{d_t}

    with ``ψ = momentum_decay``. fdl keeps ``Π`` in float64; torch keeps it in
    float32 unless the default dtype is float64.

    Returns:
        A transformation with :class:`ScaleByNadamState`.

    Example:
        >>> import torch
        >>> tx = scale_by_nadam()
        >>> u, s = tx.update({"w": torch.ones(1)}, tx.init({"w": torch.zeros(1)}))
        >>> float(s.mu_product) == 0.9 * (1 - 0.5 * 0.96 ** 0.004)
        True
    """
    C.check_unit_interval("beta1", b1)
    C.check_unit_interval("beta2", b2)
    C.check_nonneg("epsilon", eps)
    C.check_nonneg("momentum_decay", momentum_decay)

    def step(g: Leaves, state: ScaleByNadamState, mu: Leaves, nu: Leaves) -> Any:
        t = C.step_number(state.count)
        mu_t = b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * momentum_decay))
        mu_product = state.mu_product * mu_t
        c_grad = (1.0 - mu_t) / (1.0 - mu_product)
        c_mom = mu_next / (1.0 - mu_product * mu_next)
        m = _update_moment(g, mu, b1, order=1)
        v = _update_moment(g, nu, b2, order=2)
        denom = F.corrected_root_plus(v, _bias_correction(b2, t), eps)
        u = F.div(F.linear_combination(g, c_grad, m, c_mom), denom)
        return u, {"mu": m, "nu": v, "mu_product": mu_product}

    def initial(params: Params) -> dict[str, Any]:
        device = C.zero_count(params).device
        return {"mu_product": torch.ones((), dtype=torch.float64, device=device)}

    return C.stateful(
        "scale_by_nadam",
        ScaleByNadamState,
        step,
        trees=("mu", "nu"),
        initial=initial,
        hands_on_fresh=True,
    )


def scale_by_radam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    r"""RAdam's rectified scaling (Liu et al., 2020) as ``torch.optim.RAdam`` computes it.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        \hat m_t = \frac{m_t}{1-\beta_1^t}

    .. math::
        \rho_\infty = \frac{2}{1-\beta_2} - 1, \quad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t}, \quad
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}

    .. math::
        u_t = \begin{cases}
            \hat m_t \, r_t \, \dfrac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon} & \rho_t > 5 \\
            \hat m_t & \text{otherwise}
        \end{cases}

    The branch is a ``torch.where`` on a scalar tensor, so it compiles without a
    graph break. Optax's threshold is also 5 but it places eps differently.

    Returns:
        A transformation with :class:`ScaleByAdamState` (``nu_max`` is ``None``).

    Example:
        >>> import torch
        >>> tx = scale_by_radam()
        >>> tx.update({"w": torch.tensor([2.0])}, tx.init({"w": torch.zeros(1)}))[0]
        {'w': tensor([2.0000])}
    """
    C.check_unit_interval("beta1", b1)
    C.check_unit_interval("beta2", b2)
    C.check_nonneg("epsilon", eps)
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def step(g: Leaves, state: ScaleByAdamState, mu: Leaves, nu: Leaves, nu_max: None) -> Any:
        t = C.step_number(state.count)
        bc1, bc2 = _bias_correction(b1, t), _bias_correction(b2, t)
        rho_t = rho_inf - 2.0 * t * b2**t / bc2
        ratio = (
            (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
        )
        rect = torch.sqrt(torch.clamp(ratio, min=0.0))
        m = _update_moment(g, mu, b1, order=1)
        v = _update_moment(g, nu, b2, order=2)
        m_hat = F.scale(m, 1.0 / bc1)
        adaptive = F.scaled_inverse_root(v, eps, torch.sqrt(bc2) * rect)
        u = F.where(rho_t > 5.0, F.mul(m_hat, adaptive), m_hat)
        return u, {"mu": m, "nu": v, "nu_max": None}

    return C.stateful(
        "scale_by_radam",
        ScaleByAdamState,
        step,
        trees=("mu", "nu", "nu_max"),
        initial=lambda params: {"nu_max": None},
        hands_on_fresh=True,
    )


class ScaleByRmsState(NamedTuple):
    """State of :func:`scale_by_rms`: count, mean square ``nu``, and mean ``mu`` (``None``
    unless ``centered``)."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    nu: Any
    mu: Any


def scale_by_rms(
    decay: float = 0.99, eps: float = 1e-8, centered: bool = False
) -> GradientTransformation:
    r"""RMSprop's scaling as ``torch.optim.RMSprop`` (eps outside the square root).

    .. math::
        s_t = \alpha s_{t-1} + (1-\alpha) g_t^2, \qquad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g_t\ \text{(centered)}

    .. math::
        u_t = \frac{g_t}{\sqrt{s_t - \bar g_t^2} + \epsilon}\ \text{(centered)}, \qquad
        u_t = \frac{g_t}{\sqrt{s_t} + \epsilon}\ \text{(otherwise)}

    with ``α = decay``. Optax's ``scale_by_rms`` puts eps inside the root.

    Returns:
        A transformation with :class:`ScaleByRmsState`.

    Example:
        >>> import torch
        >>> tx = scale_by_rms(decay=0.75, eps=0.0)
        >>> tx.update({"w": torch.tensor([3.0])}, tx.init({"w": torch.zeros(1)}))[0]
        {'w': tensor([2.])}
    """
    C.check_nonneg("alpha", decay)
    C.check_nonneg("epsilon", eps)

    def step(g: Leaves, state: ScaleByRmsState, nu: Leaves, mu: Any) -> Any:
        s = _update_moment(g, nu, decay, order=2)
        gbar = _update_moment(g, mu, decay, order=1) if centered else None
        u = F.div(g, F.std_plus(s, gbar, eps) if centered else F.root_plus(s, eps))
        return u, {"nu": s, "mu": gbar}

    return C.stateful(
        "scale_by_rms",
        ScaleByRmsState,
        step,
        trees=("nu", "mu"),
        initial=lambda params: {} if centered else {"mu": None},
        hands_on_fresh=True,
    )


class ScaleByRssState(NamedTuple):
    """State of :func:`scale_by_rss`: count and the running sum of squares."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    sum_of_squares: Any


def scale_by_rss(
    initial_accumulator_value: float = 0.0, eps: float = 1e-10
) -> GradientTransformation:
    r"""Adagrad's scaling by the root of the summed squares, as ``torch.optim.Adagrad``.

    .. math::
        S_t = S_{t-1} + g_t^2 \ (S_0 = \text{initial\_accumulator\_value}), \qquad
        u_t = \frac{g_t}{\sqrt{S_t} + \epsilon}

    Optax's ``scale_by_rss`` puts eps inside the root and starts at 0.1.

    Returns:
        A transformation with :class:`ScaleByRssState`.

    Example:
        >>> import torch
        >>> tx = scale_by_rss(eps=0.0)
        >>> tx.update({"w": torch.tensor([-4.0])}, tx.init({"w": torch.zeros(1)}))[0]
        {'w': tensor([-1.])}
    """
    C.check_nonneg("initial_accumulator_value", initial_accumulator_value)
    C.check_nonneg("epsilon", eps)

    def step(g: Leaves, state: ScaleByRssState, sum_of_squares: Leaves) -> Any:
        s = F.add_squares(sum_of_squares, g)
        return F.div(g, F.root_plus(s, eps)), {"sum_of_squares": s}

    def initial(params: Params) -> dict[str, Any]:
        s0 = initial_accumulator_value
        if isinstance(s0, Tensor):  # a learned S_0: full_like takes numbers only
            return {"sum_of_squares": tree.map(lambda p: torch.zeros_like(p) + s0.to(p), params)}
        return {"sum_of_squares": tree.map(lambda p: torch.full_like(p, s0), params)}

    return C.stateful(
        "scale_by_rss",
        ScaleByRssState,
        step,
        trees=("sum_of_squares",),
        initial=initial,
        hands_on_fresh=True,
    )


class ScaleByAdadeltaState(NamedTuple):
    """State of :func:`scale_by_adadelta`: count, mean squared gradient ``e_g`` and mean
    squared update ``e_x``."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    e_g: Any
    e_x: Any


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> GradientTransformation:
    r"""Adadelta's scaling (Zeiler, 2012) as ``torch.optim.Adadelta``.

    .. math::
        E[g^2]_t = \rho E[g^2]_{t-1} + (1-\rho) g_t^2, \qquad
        \Delta_t = \frac{\sqrt{E[\Delta^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}}\, g_t,
        \qquad E[\Delta^2]_t = \rho E[\Delta^2]_{t-1} + (1-\rho) \Delta_t^2

    and :math:`u_t = \Delta_t` (the learning rate then scales it, default 1.0).

    Returns:
        A transformation with :class:`ScaleByAdadeltaState`.

    Example:
        >>> import torch
        >>> tx = scale_by_adadelta(rho=0.0, eps=1.0)
        >>> tx.update({"w": torch.tensor([0.0])}, tx.init({"w": torch.zeros(1)}))[0]
        {'w': tensor([0.])}
    """
    C.check_unit_interval("rho", rho, closed=True)
    C.check_nonneg("epsilon", eps)

    def step(g: Leaves, state: ScaleByAdadeltaState, e_g: Leaves, e_x: Leaves) -> Any:
        e_g = _update_moment(g, e_g, rho, order=2)
        delta = F.mul(F.div(F.rms(e_x, eps), F.rms(e_g, eps)), g)
        return delta, {"e_g": e_g, "e_x": _update_moment(delta, e_x, rho, order=2)}

    return C.stateful("scale_by_adadelta", ScaleByAdadeltaState, step, trees=("e_g", "e_x"))
