"""Building blocks of the optimizers: small gradient transformations with Optax names.

Each block is a factory returning a :class:`~fdl.optim.GradientTransformation`
plus, when it keeps state, a ``NamedTuple`` state class. Formulas are written
with ``g`` the incoming updates (gradients), ``t`` the 1-based step number
(``count + 1``) and the state names of the code. The update rules follow
``torch.optim`` (eps placement, first-step momentum, ...), which is where they
differ from Optax; each docstring says so.

All blocks work on the flat list of leaves through :mod:`fdl.optim._foreach`,
so the eager path uses ``torch._foreach_*`` ops and the traced path per-leaf
ops that ``torch.compile`` fuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fdl import tree
from fdl.optim import _foreach as F
from fdl.optim.base import (
    EmptyState,
    GradientTransformation,
    Params,
    ScalarOrSchedule,
    Updates,
    _flatten_updates,
    _state_leaves,
    _zero_count,
)

__all__ = [
    "ApplyIfFiniteState",
    "MaskedState",
    "MultiStepsState",
    "ScaleByAdadeltaState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByNadamState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "TraceState",
    "add_decayed_weights",
    "apply_if_finite",
    "clip",
    "clip_by_global_norm",
    "freeze",
    "masked",
    "multi_steps",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_learning_rate",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "set_to_zero",
    "trace",
]

Tensor = torch.Tensor


def _step(count: Tensor) -> Tensor:
    """The 1-based step number ``t = count + 1`` as a float64 scalar tensor."""
    return (count + 1).to(torch.float64)


def _scheduled(value: Any, count: Tensor) -> Any:
    """A hyperparameter that may be a schedule: its value at ``count``.

    A float passes through. A schedule's value is a float64 tensor; eagerly it is
    read back as a Python float, so the eager ``foreach`` ops see exactly what
    torch's optimizers see (a number), while traced code keeps the tensor (and
    never recompiles as it changes).
    """
    if not callable(value):
        return value
    v = torch.as_tensor(value(count), dtype=torch.float64)
    if torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(v):
        (v,) = F.materialize(v)
        return v
    return float(v)


def _check_unit_interval(name: str, value: float, *, closed: bool = False) -> None:
    ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not ok:
        bound = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"Invalid {name} value: {value} (expected a number in {bound})")


def _check_nonneg(name: str, value: float) -> None:
    if not value >= 0.0:
        raise ValueError(f"Invalid {name} value: {value} (expected >= 0)")


# ---------------------------------------------------------------------------
# scaling
# ---------------------------------------------------------------------------


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

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None
    ) -> tuple[Updates, EmptyState]:
        g, treedef, _ = _flatten_updates(updates, params)
        return tree.unflatten(treedef, F.scale(g, step_size)), state

    return GradientTransformation(init, update)


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

    def init(params: Params) -> ScaleByScheduleState:
        return ScaleByScheduleState(_zero_count(params))

    def update(
        updates: Updates, state: ScaleByScheduleState, params: Params | None = None
    ) -> tuple[Updates, ScaleByScheduleState]:
        g, treedef, _ = _flatten_updates(updates, params)
        factor = step_size_fn(state.count)
        if isinstance(factor, Tensor):
            (factor,) = F.materialize(factor.to(torch.float64))
        return tree.unflatten(treedef, F.scale(g, factor)), ScaleByScheduleState(state.count + 1)

    return GradientTransformation(init, update)


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    r"""Scale by the (negated) learning rate: :math:`u = -\eta\,g`.

    This block holds gradient descent's sign flip, so that
    :func:`fdl.optim.apply_updates` only adds.

    Args:
        learning_rate: a float, a scalar tensor, or a schedule (a function of the
            step-count tensor returning the learning rate, e.g. one of
            :mod:`fdl.optim.schedules`).
        flip_sign: multiply by ``-lr`` (default) rather than ``lr``.

    Returns:
        A stateless transformation for a constant ``lr``; for a schedule, one
        with :class:`ScaleByScheduleState` (the schedule sees 0 at the first
        update, 1 at the second, ...).

    Example:
        >>> import torch
        >>> tx = scale_by_learning_rate(0.1)
        >>> tx.update({"w": torch.ones(2)}, tx.init(None))[0]
        {'w': tensor([-0.1000, -0.1000])}
    """
    sign = -1.0 if flip_sign else 1.0
    if callable(learning_rate):
        fn = learning_rate
        return scale_by_schedule(lambda count: sign * fn(count))
    if isinstance(learning_rate, Tensor):
        return scale_by_schedule(lambda count: sign * learning_rate)
    return scale(sign * float(learning_rate))


# ---------------------------------------------------------------------------
# weight decay, clipping, momentum
# ---------------------------------------------------------------------------


def add_decayed_weights(
    weight_decay: float = 0.0, mask: Any | Callable[[Params], Any] | None = None
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
    _check_nonneg("weight_decay", weight_decay)

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None
    ) -> tuple[Updates, EmptyState]:
        g, treedef, p = _flatten_updates(
            updates, params, needs_params=True, who="add_decayed_weights"
        )
        assert p is not None
        return tree.unflatten(treedef, F.add(g, p, alpha=weight_decay)), state

    tx = GradientTransformation(init, update)
    return masked(tx, mask) if mask is not None else tx


class TraceState(NamedTuple):
    """State of :func:`trace`: step count and momentum buffer."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    trace: Any


def trace(
    decay: float | Callable[[Tensor], Tensor], nesterov: bool = False, dampening: float = 0.0
) -> GradientTransformation:
    r"""Momentum as in ``torch.optim.SGD``.

    .. math::
        b_t = \begin{cases} g_t & t = 1 \\ \mu\, b_{t-1} + (1-d)\, g_t & t > 1 \end{cases}
        \qquad
        u_t = \begin{cases} g_t + \mu\, b_t & \text{nesterov} \\ b_t & \text{otherwise}\end{cases}

    with ``μ = decay`` and ``d = dampening``. The first step copies the gradient
    (no dampening), as torch does; Optax's ``trace`` has no dampening.

    Args:
        decay: the momentum ``μ``: a float, or a schedule of the step count (e.g.
            ``OneCycleLR(...).momentum``) whose value at each update is used, as
            torch's schedulers set ``momentum`` before each ``step()``.
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
        _check_nonneg("momentum", decay)

    def init(params: Params) -> TraceState:
        return TraceState(_zero_count(params), tree.zeros_like(params))

    def update(
        updates: Updates, state: TraceState, params: Params | None = None
    ) -> tuple[Updates, TraceState]:
        g, treedef, _ = _flatten_updates(updates, params)
        buf = _state_leaves(state.trace, treedef, updates, "state.trace")
        mu = _scheduled(decay, state.count)
        if dampening == 0.0:
            # from a zero buffer, decay * 0 + g == g exactly: the first step needs no branch
            new = F.decay_add(buf, mu, g, 1.0)
        else:
            (coef,) = F.materialize(
                torch.where(state.count == 0, 1.0, 1.0 - dampening).to(torch.float64)
            )
            new = F.axpby(buf, mu, g, coef)
        if not nesterov:
            out = new
        elif isinstance(mu, Tensor):
            out = F.axpby(g, 1.0, new, mu)
        else:
            out = F.add(g, new, alpha=mu)
        return tree.unflatten(treedef, out), TraceState(
            state.count + 1, tree.unflatten(treedef, new)
        )

    return GradientTransformation(init, update)


def clip(max_delta: float) -> GradientTransformation:
    r"""Clip every element to ``[-max_delta, max_delta]``: :math:`u = \min(\max(g, -c), c)`.

    Same result as ``torch.nn.utils.clip_grad_value_(params, clip_value=max_delta)``.

    Args:
        max_delta: the bound ``c`` (>= 0).

    Returns:
        A stateless transformation.

    Example:
        >>> import torch
        >>> tx = clip(1.0)
        >>> tx.update({"w": torch.tensor([-3.0, 0.5])}, tx.init(None))[0]
        {'w': tensor([-1.0000,  0.5000])}
    """
    _check_nonneg("max_delta", max_delta)

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None
    ) -> tuple[Updates, EmptyState]:
        g, treedef, _ = _flatten_updates(updates, params)
        return tree.unflatten(treedef, F.clamp(g, -max_delta, max_delta)), state

    return GradientTransformation(init, update)


def clip_by_global_norm(
    max_norm: float, norm_type: float = 2.0, *, error_if_nonfinite: bool = False
) -> GradientTransformation:
    r"""Rescale the updates when their global norm exceeds ``max_norm``.

    .. math::
        N = \Big\| \big(\|g_1\|_p, \dots, \|g_n\|_p\big) \Big\|_p, \qquad
        u = g \cdot \min\!\Big(1, \frac{c}{N + 10^{-6}}\Big)

    with ``c = max_norm`` and ``p = norm_type``: the same result as
    ``torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)`` (including
    its ``1e-6`` and multiplying even when no clipping occurs).

    Args:
        max_norm: the largest allowed global norm ``c``.
        norm_type: the norm order ``p`` (``float('inf')`` for the max norm).
        error_if_nonfinite: raise ``RuntimeError`` when ``N`` is NaN or infinite,
            as torch does. Reading ``N`` back costs a host sync, and compiled code
            cannot raise on a value, so this works eagerly only (building the
            update under ``torch.compile`` with it raises). To skip bad steps
            inside compiled code, combine with :func:`apply_if_finite` instead.

    Returns:
        A stateless transformation.

    Example:
        >>> import torch
        >>> tx = clip_by_global_norm(1.0)
        >>> u, _ = tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init(None))
        >>> round(float(torch.linalg.vector_norm(u["w"])), 4)
        1.0
    """
    _check_nonneg("max_norm", max_norm)
    ord = float(norm_type)

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None
    ) -> tuple[Updates, EmptyState]:
        g, treedef, _ = _flatten_updates(updates, params)
        if not g:
            return updates, state
        total = torch.linalg.vector_norm(torch.stack(F.norms(g, ord)), ord)
        if error_if_nonfinite:
            if torch.compiler.is_compiling():
                raise RuntimeError(
                    "clip_by_global_norm(error_if_nonfinite=True) cannot run under "
                    "torch.compile: it reads the norm back to raise; use apply_if_finite"
                )
            if not bool(torch.isfinite(total)):
                raise RuntimeError(
                    f"The total norm of order {ord} for gradients from `parameters` is "
                    "non-finite, so it cannot be clipped. To disable this error and scale "
                    "the gradients by the non-finite norm anyway, set "
                    "`error_if_nonfinite=False`"
                )
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        return tree.unflatten(treedef, F.scale(g, coef)), state

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------
# adaptive scalings
# ---------------------------------------------------------------------------


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
) -> GradientTransformation:
    r"""Adam's scaling (Kingma & Ba, 2015), with eps placed as ``torch.optim.Adam`` does.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \qquad
        \hat v_t = \max(\hat v_{t-1}, v_t)\ \text{(amsgrad, else } \hat v_t = v_t)

    .. math::
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{\hat v_t} / \sqrt{1-\beta_2^t} + \epsilon}

    Args:
        b1: ``β1``, decay of the first moment: a float, or a schedule of the step
            count (e.g. ``OneCycleLR(...).momentum``); with a schedule, ``β1`` at
            the current step is used in the moment and in ``1 - β1^t``, as torch
            does when a scheduler cycles ``betas[0]``.
        b2: ``β2``, decay of the second moment.
        eps: ``ε``, added to the bias-corrected root second moment (as torch;
            Optax adds it likewise, outside the root).
        amsgrad: keep the running maximum of ``v`` and divide by it.

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
        _check_unit_interval("beta1", b1)
    _check_unit_interval("beta2", b2)
    _check_nonneg("eps", eps)

    def init(params: Params) -> ScaleByAdamState:
        return ScaleByAdamState(
            _zero_count(params),
            tree.zeros_like(params),
            tree.zeros_like(params),
            tree.zeros_like(params) if amsgrad else None,
        )

    def update(
        updates: Updates, state: ScaleByAdamState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdamState]:
        g, treedef, _ = _flatten_updates(updates, params)
        m = _state_leaves(state.mu, treedef, updates, "state.mu")
        v = _state_leaves(state.nu, treedef, updates, "state.nu")
        t = _step(state.count)
        beta1 = _scheduled(b1, state.count)
        bc1 = 1.0 - beta1**t
        bc2_sqrt = torch.sqrt(1.0 - b2**t)
        m = F.lerp(m, g, 1.0 - beta1)
        v = F.decay_addcmul(v, b2, g, g, 1.0 - b2)
        if amsgrad:
            v_max = F.maximum(_state_leaves(state.nu_max, treedef, updates, "state.nu_max"), v)
            v_hat = v_max
        else:
            v_max, v_hat = None, v
        # denominator scaled by bc1 so that one division gives m̂ / (sqrt(v̂) + eps)
        a, b = F.materialize(bc1 / bc2_sqrt, eps * bc1)
        denom = F.sqrt_affine(v_hat, a, b)
        out = F.div(m, denom)
        F.fresh(out)
        new_state = ScaleByAdamState(
            state.count + 1,
            tree.unflatten(treedef, m),
            tree.unflatten(treedef, v),
            tree.unflatten(treedef, v_max) if v_max is not None else None,
        )
        return tree.unflatten(treedef, out), new_state

    return GradientTransformation(init, update)


class ScaleByAdamaxState(NamedTuple):
    """State of :func:`scale_by_adamax`: count, first moment ``mu``, infinity norm ``nu``."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    mu: Any
    nu: Any


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
    _check_unit_interval("beta1", b1)
    _check_unit_interval("beta2", b2)
    _check_nonneg("eps", eps)

    def init(params: Params) -> ScaleByAdamaxState:
        return ScaleByAdamaxState(
            _zero_count(params), tree.zeros_like(params), tree.zeros_like(params)
        )

    def update(
        updates: Updates, state: ScaleByAdamaxState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdamaxState]:
        g, treedef, _ = _flatten_updates(updates, params)
        m = _state_leaves(state.mu, treedef, updates, "state.mu")
        n = _state_leaves(state.nu, treedef, updates, "state.nu")
        bc1 = 1.0 - b1 ** _step(state.count)
        m = F.lerp(m, g, 1.0 - b1)
        n = F.maximum(F.scale(n, b2), F.abs_add(g, eps))
        (inv_bc1,) = F.materialize(1.0 / bc1)
        out = F.scale(F.div(m, n), inv_bc1)
        F.fresh(out)
        return tree.unflatten(treedef, out), ScaleByAdamaxState(
            state.count + 1, tree.unflatten(treedef, m), tree.unflatten(treedef, n)
        )

    return GradientTransformation(init, update)


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
    _check_unit_interval("beta1", b1)
    _check_unit_interval("beta2", b2)
    _check_nonneg("eps", eps)
    _check_nonneg("momentum_decay", momentum_decay)

    def init(params: Params) -> ScaleByNadamState:
        count = _zero_count(params)
        return ScaleByNadamState(
            count,
            tree.zeros_like(params),
            tree.zeros_like(params),
            torch.ones((), dtype=torch.float64, device=count.device),
        )

    def update(
        updates: Updates, state: ScaleByNadamState, params: Params | None = None
    ) -> tuple[Updates, ScaleByNadamState]:
        g, treedef, _ = _flatten_updates(updates, params)
        m = _state_leaves(state.mu, treedef, updates, "state.mu")
        v = _state_leaves(state.nu, treedef, updates, "state.nu")
        t = _step(state.count)
        bc2 = 1.0 - b2**t
        mu_t = b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * momentum_decay))
        mu_product = state.mu_product * mu_t
        c_grad = (1.0 - mu_t) / (1.0 - mu_product)
        c_mom = mu_next / (1.0 - mu_product * mu_next)
        bc2, c_grad, c_mom = F.materialize(bc2, c_grad, c_mom)
        m = F.lerp(m, g, 1.0 - b1)
        v = F.decay_addcmul(v, b2, g, g, 1.0 - b2)
        denom = F.div_sqrt_add(v, bc2, eps)
        out = F.div(F.axpby(g, c_grad, m, c_mom), denom)
        F.fresh(out)
        return tree.unflatten(treedef, out), ScaleByNadamState(
            state.count + 1, tree.unflatten(treedef, m), tree.unflatten(treedef, v), mu_product
        )

    return GradientTransformation(init, update)


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
    _check_unit_interval("beta1", b1)
    _check_unit_interval("beta2", b2)
    _check_nonneg("eps", eps)
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def init(params: Params) -> ScaleByAdamState:
        return ScaleByAdamState(
            _zero_count(params), tree.zeros_like(params), tree.zeros_like(params), None
        )

    def update(
        updates: Updates, state: ScaleByAdamState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdamState]:
        g, treedef, _ = _flatten_updates(updates, params)
        m = _state_leaves(state.mu, treedef, updates, "state.mu")
        v = _state_leaves(state.nu, treedef, updates, "state.nu")
        t = _step(state.count)
        bc1 = 1.0 - b1**t
        b2_t = b2**t
        bc2 = 1.0 - b2_t
        rho_t = rho_inf - 2.0 * t * b2_t / bc2
        ratio = (
            (rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
        )
        rect = torch.sqrt(torch.clamp(ratio, min=0.0))
        inv_bc1, adapt_scale, rho_t = F.materialize(1.0 / bc1, torch.sqrt(bc2) * rect, rho_t)
        m = F.lerp(m, g, 1.0 - b1)
        v = F.decay_addcmul(v, b2, g, g, 1.0 - b2)
        m_hat = F.scale(m, inv_bc1)
        adaptive = F.sqrt_add_rdiv(v, eps, adapt_scale)
        out = F.where(rho_t > 5.0, F.mul(m_hat, adaptive), m_hat)
        F.fresh(out)
        return tree.unflatten(treedef, out), ScaleByAdamState(
            state.count + 1, tree.unflatten(treedef, m), tree.unflatten(treedef, v), None
        )

    return GradientTransformation(init, update)


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
    _check_nonneg("alpha", decay)
    _check_nonneg("eps", eps)

    def init(params: Params) -> ScaleByRmsState:
        return ScaleByRmsState(
            _zero_count(params),
            tree.zeros_like(params),
            tree.zeros_like(params) if centered else None,
        )

    def update(
        updates: Updates, state: ScaleByRmsState, params: Params | None = None
    ) -> tuple[Updates, ScaleByRmsState]:
        g, treedef, _ = _flatten_updates(updates, params)
        s = _state_leaves(state.nu, treedef, updates, "state.nu")
        s = F.decay_addcmul(s, decay, g, g, 1.0 - decay)
        if centered:
            gbar = F.lerp(_state_leaves(state.mu, treedef, updates, "state.mu"), g, 1.0 - decay)
            avg = F.centered_sqrt_add(s, gbar, eps)
        else:
            gbar = None
            avg = F.sqrt_add(s, eps)
        out = F.div(g, avg)
        F.fresh(out)
        return tree.unflatten(treedef, out), ScaleByRmsState(
            state.count + 1,
            tree.unflatten(treedef, s),
            tree.unflatten(treedef, gbar) if gbar is not None else None,
        )

    return GradientTransformation(init, update)


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
    _check_nonneg("initial_accumulator_value", initial_accumulator_value)
    _check_nonneg("eps", eps)

    def init(params: Params) -> ScaleByRssState:
        return ScaleByRssState(
            _zero_count(params),
            tree.map(lambda p: torch.full_like(p, initial_accumulator_value), params),
        )

    def update(
        updates: Updates, state: ScaleByRssState, params: Params | None = None
    ) -> tuple[Updates, ScaleByRssState]:
        g, treedef, _ = _flatten_updates(updates, params)
        s = _state_leaves(state.sum_of_squares, treedef, updates, "state.sum_of_squares")
        s = F.addcmul(s, g, g, 1.0)
        out = F.div(g, F.sqrt_add(s, eps))
        F.fresh(out)
        return tree.unflatten(treedef, out), ScaleByRssState(
            state.count + 1, tree.unflatten(treedef, s)
        )

    return GradientTransformation(init, update)


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
    _check_unit_interval("rho", rho, closed=True)
    _check_nonneg("eps", eps)

    def init(params: Params) -> ScaleByAdadeltaState:
        return ScaleByAdadeltaState(
            _zero_count(params), tree.zeros_like(params), tree.zeros_like(params)
        )

    def update(
        updates: Updates, state: ScaleByAdadeltaState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdadeltaState]:
        g, treedef, _ = _flatten_updates(updates, params)
        e_g = _state_leaves(state.e_g, treedef, updates, "state.e_g")
        e_x = _state_leaves(state.e_x, treedef, updates, "state.e_x")
        e_g = F.decay_addcmul(e_g, rho, g, g, 1.0 - rho)
        delta = F.mul(F.div(F.add_sqrt(e_x, eps), F.add_sqrt(e_g, eps)), g)
        e_x = F.decay_addcmul(e_x, rho, delta, delta, 1.0 - rho)
        return tree.unflatten(treedef, delta), ScaleByAdadeltaState(
            state.count + 1, tree.unflatten(treedef, e_g), tree.unflatten(treedef, e_x)
        )

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------
# wrappers: masking, accumulation, skipping non-finite steps
# ---------------------------------------------------------------------------


def _is_none(x: Any) -> bool:
    return x is None


class MaskedState(NamedTuple):
    """State of :func:`masked`: the inner state, built on the masked-in leaves only."""

    inner_state: Any


def _mask_leaves(t: Any, mask: Any, what: str) -> tuple[list[Any], Any, list[bool]]:
    """Flatten ``t`` (``None`` kept as leaves) and the boolean ``mask`` of its structure."""
    mask = mask(t) if callable(mask) else mask
    lv, treedef = tree.flatten(t, is_leaf=_is_none)
    m_lv, m_def = tree.flatten(mask, is_leaf=_is_none)
    if m_def != treedef:
        tree.assert_same_structure(t, mask, names=(what, "mask"))
    for path, m in zip(tree.paths(mask), tree.leaves(mask), strict=False):
        if not isinstance(m, bool):
            raise TypeError(f"mask leaves must be Python bools; got {type(m).__name__} at '{path}'")
    return lv, treedef, m_lv


def masked(
    inner: GradientTransformation, mask: Any | Callable[[Params], Any]
) -> GradientTransformation:
    r"""Apply ``inner`` only to the leaves where ``mask`` is ``True``; pass the others through.

    :math:`u_i = \text{inner}(g)_i` where ``mask[i]``, else :math:`u_i = g_i`. The
    inner transformation sees a tree whose masked-out leaves are ``None``, so its
    state holds nothing for them.

    Args:
        inner: the transformation to apply.
        mask: a tree of Python bools with the params' structure, or a function of
            the params (or of the updates when no params are given) returning one.

    Returns:
        A transformation with :class:`MaskedState`.

    Example:
        >>> import torch
        >>> tx = masked(scale(0.0), {"w": True, "b": False})
        >>> p = {"w": torch.ones(1), "b": torch.ones(1)}
        >>> tx.update(p, tx.init(p), p)[0]
        {'w': tensor([0.]), 'b': tensor([1.])}
    """

    def init(params: Params) -> MaskedState:
        lv, treedef, m = _mask_leaves(params, mask, "params")
        return MaskedState(inner.init(tree.unflatten(treedef, _select(lv, m))))

    def update(
        updates: Updates, state: MaskedState, params: Params | None = None
    ) -> tuple[Updates, MaskedState]:
        _flatten_updates(updates, params)
        u, treedef, m = _mask_leaves(
            updates, mask if params is None else _resolved(mask, params), "updates"
        )
        masked_params = None
        if params is not None:
            p, _ = tree.flatten(params, is_leaf=_is_none)
            masked_params = tree.unflatten(treedef, _select(p, m))
        new_u, inner_state = inner.update(
            tree.unflatten(treedef, _select(u, m)), state.inner_state, masked_params
        )
        new_lv, _ = tree.flatten(new_u, is_leaf=_is_none)
        merged = [n if keep else old for n, old, keep in zip(new_lv, u, m, strict=True)]
        return tree.unflatten(treedef, merged), MaskedState(inner_state)

    return GradientTransformation(init, update)


def _resolved(mask: Any, params: Params) -> Any:
    return mask(params) if callable(mask) else mask


def _select(lv: list[Any], m: list[bool]) -> list[Any]:
    return [x if keep else None for x, keep in zip(lv, m, strict=True)]


def set_to_zero() -> GradientTransformation:
    r"""Replace the updates by zeros: :math:`u = 0`.

    Example:
        >>> import torch
        >>> tx = set_to_zero()
        >>> tx.update({"w": torch.ones(2)}, tx.init(None))[0]
        {'w': tensor([0., 0.])}
    """

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None
    ) -> tuple[Updates, EmptyState]:
        del params
        return tree.zeros_like(updates), state

    return GradientTransformation(init, update)


def freeze(mask: Any | Callable[[Params], Any]) -> GradientTransformation:
    r"""Zero the updates of the leaves where ``mask`` is ``True`` (those parameters stay fixed).

    ``freeze(mask) = masked(set_to_zero(), mask)``; chain it after the optimizer.

    Example:
        >>> import torch
        >>> tx = freeze({"w": True, "b": False})
        >>> p = {"w": torch.ones(1), "b": torch.ones(1)}
        >>> tx.update(p, tx.init(p), p)[0]
        {'w': tensor([0.]), 'b': tensor([1.])}
    """
    return masked(set_to_zero(), mask)


class MultiStepsState(NamedTuple):
    """State of :func:`multi_steps`: micro-step within the current accumulation,
    number of inner updates applied, the inner state, and the gradient sum."""

    mini_step: Tensor
    gradient_step: Tensor
    inner_state: Any
    acc_grads: Any


def multi_steps(inner: GradientTransformation, every_k_schedule: int) -> GradientTransformation:
    r"""Accumulate gradients over ``k = every_k_schedule`` calls, then apply ``inner`` once.

    .. math::
        A \leftarrow A + g; \qquad
        u = \begin{cases} \text{inner}(A / k) & \text{on the } k\text{-th call} \\
        0 & \text{otherwise}\end{cases}

    The same as calling ``loss.backward()`` on ``loss / k`` for k micro-batches and
    stepping a torch optimizer once (up to rounding: fdl sums, then divides). The
    choice is a ``torch.where`` on a scalar tensor so the step compiles into one
    graph; the inner update is therefore computed on every call.

    Args:
        inner: the optimizer to apply every k calls.
        every_k_schedule: ``k`` (a positive int).

    Returns:
        A transformation with :class:`MultiStepsState`.

    Example:
        >>> import torch, fdl
        >>> tx = multi_steps(fdl.optim.sgd(lr=1.0), every_k_schedule=2)
        >>> p = {"w": torch.zeros(1)}
        >>> s = tx.init(p)
        >>> u, s = tx.update({"w": torch.tensor([1.0])}, s, p)
        >>> u["w"]
        tensor([0.])
        >>> u, s = tx.update({"w": torch.tensor([3.0])}, s, p)
        >>> u["w"]
        tensor([-2.])
    """
    if not isinstance(every_k_schedule, int) or every_k_schedule < 1:
        raise ValueError(f"every_k_schedule must be a positive int; got {every_k_schedule!r}")
    k = every_k_schedule

    def init(params: Params) -> MultiStepsState:
        count = _zero_count(params)
        return MultiStepsState(count, count.clone(), inner.init(params), tree.zeros_like(params))

    def update(
        updates: Updates, state: MultiStepsState, params: Params | None = None
    ) -> tuple[Updates, MultiStepsState]:
        g, treedef, _ = _flatten_updates(updates, params)
        acc = F.add(_state_leaves(state.acc_grads, treedef, updates, "state.acc_grads"), g)
        emit = state.mini_step + 1 >= k
        new_u, new_inner = inner.update(
            tree.unflatten(treedef, F.scale(acc, 1.0 / k)), state.inner_state, params
        )
        out = F.where_zero(emit, tree.leaves(new_u))
        inner_state = tree.map(lambda a, b: torch.where(emit, a, b), new_inner, state.inner_state)
        acc = F.where_zero(~emit, acc)
        return tree.unflatten(treedef, out), MultiStepsState(
            torch.where(emit, 0, state.mini_step + 1),
            state.gradient_step + emit.to(state.gradient_step.dtype),
            inner_state,
            tree.unflatten(treedef, acc),
        )

    return GradientTransformation(init, update)


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`: consecutive and total non-finite steps, whether
    the last step was finite, and the inner state."""

    notfinite_count: Tensor
    last_finite: Tensor
    total_notfinite: Tensor
    inner_state: Any


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int | None = None
) -> GradientTransformation:
    r"""Skip steps whose gradients hold a NaN or inf: zero updates, inner state unchanged.

    With ``ok = all(isfinite(g))``: :math:`u = \text{inner}(g)` and the inner
    state advances when ``ok``; otherwise :math:`u = 0` and the inner state is
    kept. After more than ``max_consecutive_errors`` bad steps in a row the
    update is applied anyway (``None``: never). The choice is a ``torch.where``,
    so the step compiles into one graph.

    Returns:
        A transformation with :class:`ApplyIfFiniteState`.

    Example:
        >>> import torch, fdl
        >>> tx = apply_if_finite(fdl.optim.sgd(lr=1.0))
        >>> p = {"w": torch.zeros(1)}
        >>> u, s = tx.update({"w": torch.tensor([float("nan")])}, tx.init(p), p)
        >>> u["w"], s.total_notfinite
        (tensor([0.]), tensor(1))
    """

    def init(params: Params) -> ApplyIfFiniteState:
        count = _zero_count(params)
        return ApplyIfFiniteState(
            count,
            torch.ones((), dtype=torch.bool, device=count.device),
            count.clone(),
            inner.init(params),
        )

    def update(
        updates: Updates, state: ApplyIfFiniteState, params: Params | None = None
    ) -> tuple[Updates, ApplyIfFiniteState]:
        g, treedef, _ = _flatten_updates(updates, params)
        ok = tree.all_finite(updates).to(state.last_finite.device)
        notfinite = torch.where(ok, 0, state.notfinite_count + 1)
        apply = ok if max_consecutive_errors is None else ok | (notfinite > max_consecutive_errors)
        new_u, new_inner = inner.update(updates, state.inner_state, params)
        out = F.where_zero(apply, tree.leaves(new_u))
        inner_state = tree.map(lambda a, b: torch.where(apply, a, b), new_inner, state.inner_state)
        return tree.unflatten(treedef, out), ApplyIfFiniteState(
            notfinite,
            ok,
            state.total_notfinite + (~ok).to(state.total_notfinite.dtype),
            inner_state,
        )

    return GradientTransformation(init, update)
