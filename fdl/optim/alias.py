"""The optimizers: ``torch.optim`` names in lower case, each a short ``chain`` of blocks.

Every optimizer takes ``torch.optim``'s keyword arguments with torch's defaults
and validation, and reproduces torch's update step for step. ``lr`` may be a
float, a scalar tensor or a schedule (see :mod:`fdl.optim.schedules`).
``torch.optim``'s implementation flags (``foreach``, ``fused``, ``capturable``,
``differentiable``) are not accepted: fdl's update is pure, uses
``torch._foreach_*`` ops by itself in eager mode and is fused by
``torch.compile``.

Notation in the formulas: ``θ`` params, ``g`` gradient, ``η`` learning rate,
``λ`` weight decay, ``t`` the 1-based step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fdl.optim import _common as C
from fdl.optim import adaptive as A
from fdl.optim.base import GradientTransformation, ScalarOrSchedule, Schedule, _chain
from fdl.optim.scaling import add_decayed_weights, scale, scale_by_learning_rate, trace

__all__ = ["adadelta", "adagrad", "adam", "adamax", "adamw", "nadam", "radam", "rmsprop", "sgd"]

_IMPL_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def _reject_extra(name: str, extra: dict[str, Any]) -> None:
    for k in extra:
        if k in _IMPL_FLAGS:
            raise TypeError(
                f"fdl.optim.{name} does not accept torch.optim's implementation flag {k!r}: "
                "the update is pure, uses torch._foreach_* ops by itself in eager mode and is "
                "fused by torch.compile"
            )
    if extra:
        raise TypeError(
            f"fdl.optim.{name}() got an unexpected keyword argument {next(iter(extra))!r}"
        )


def _check_betas(betas: tuple[Any, float], *, schedule_ok: bool = False) -> None:
    """A pair; with ``schedule_ok`` beta1 may be a schedule (the block checks the values)."""
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2); got {betas!r}")
    if callable(betas[0]) and not schedule_ok:
        raise ValueError("beta1 may be a schedule only for adam and adamw")


def _nonzero(value: Any) -> bool:
    """A block is needed for ``value``: a tensor (it may be learned) or a non-zero number."""
    return isinstance(value, torch.Tensor) or value != 0


def _optimizer(
    name: str,
    lr: ScalarOrSchedule,
    core: list[GradientTransformation],
    maximize: bool,
    weight_decay: float,
    decoupled: bool = False,
) -> GradientTransformation:
    """torch's order of steps around an optimizer's own blocks ``core``.

    ``chain(scale(-1) if maximize, add_decayed_weights(λ) (L2), *core,
    add_decayed_weights(λ) (decoupled), scale_by_learning_rate(lr))``. Each block
    checks its own hyperparameters, so a block is built for every non-zero value
    (a negative one then raises) and the optimizers check only what no block sees.
    """
    decay = [add_decayed_weights(weight_decay)] if _nonzero(weight_decay) else []
    blocks = [scale(-1.0)] if maximize else []
    blocks += [*([] if decoupled else decay), *core, *(decay if decoupled else [])]
    return _chain((*blocks, scale_by_learning_rate(lr)), name)


def sgd(
    lr: ScalarOrSchedule = 1e-3,
    momentum: float | Schedule = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    .. math::
        g \leftarrow \pm g + \lambda\theta, \quad
        b_t = \begin{cases} g & t=1 \\ \mu b_{t-1} + (1-d) g & t>1 \end{cases}, \quad
        \theta_{t+1} = \theta_t - \eta \cdot
            \begin{cases} g + \mu b_t & \text{nesterov} \\ b_t & \mu \ne 0 \\
            g & \mu = 0 \end{cases}

    ``chain(scale(-1) if maximize, add_decayed_weights(λ), trace(μ, nesterov, d),
    scale_by_learning_rate(η))``.

    Args:
        lr: learning rate ``η`` (float, tensor or schedule).
        momentum: ``μ``, a float or a schedule of the step count (e.g.
            ``OneCycleLR(...).momentum``, torch's ``cycle_momentum``).
            dampening: ``d``. weight_decay: L2 penalty ``λ``.
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        maximize: ascend the objective instead.

    Returns:
        A :class:`~fdl.optim.GradientTransformation`.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.sgd(lr=0.1, momentum=0.9)
        >>> p = {"w": torch.ones(2)}
        >>> u, s = opt.update({"w": torch.ones(2)}, opt.init(p), p)
        >>> fdl.optim.apply_updates(p, u)
        {'w': tensor([0.9000, 0.9000])}
    """
    _reject_extra("sgd", unsupported)
    # None: a schedule or a tensor (a momentum that may be learned; never 0 here)
    fixed = None if callable(momentum) or isinstance(momentum, torch.Tensor) else momentum
    if nesterov and ((fixed is not None and fixed <= 0) or C.nonzero_value(dampening)):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    core = [] if fixed == 0 else [trace(momentum, nesterov=nesterov, dampening=dampening)]
    return _optimizer("sgd", lr, core, maximize, weight_decay)


def adam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float | Schedule, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    decoupled_weight_decay: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""Adam (Kingma & Ba, 2015), as ``torch.optim.Adam``.

    .. math::
        g \leftarrow \pm g\ (+\lambda\theta\ \text{if L2}), \quad
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2

    .. math::
        \theta_{t+1} = \theta_t - \eta\Big(
            \frac{m_t/(1-\beta_1^t)}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}
            \ (+\lambda\theta_t\ \text{if decoupled})\Big)

    with :math:`\hat v_t = v_t`, or :math:`\max(\hat v_{t-1}, v_t)` with
    ``amsgrad``. ``chain(scale(-1) if maximize, add_decayed_weights(λ) (L2),
    scale_by_adam(β1, β2, ε, amsgrad), add_decayed_weights(λ) (decoupled),
    scale_by_learning_rate(η))``.

    Args:
        lr: ``η``. betas: ``(β1, β2)``; ``β1`` may be a schedule (e.g.
            ``OneCycleLR(...).momentum``, torch's ``cycle_momentum``). eps: ``ε``.
            weight_decay: ``λ``.
        amsgrad: use the running maximum of ``v``.
        maximize: ascend the objective.
        decoupled_weight_decay: AdamW's decay ``θ ← θ(1 - ηλ)`` instead of L2.

    Returns:
        A :class:`~fdl.optim.GradientTransformation`.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.adam(lr=0.1)
        >>> p = {"w": torch.zeros(2)}
        >>> u, s = opt.update({"w": torch.tensor([1.0, -1.0])}, opt.init(p), p)
        >>> u["w"]
        tensor([-0.1000,  0.1000])
    """
    _reject_extra("adam", unsupported)
    return _adam("adam", lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay)


def _adam(
    name: str,
    lr: ScalarOrSchedule,
    betas: tuple[float | Schedule, float],
    eps: float,
    weight_decay: float,
    amsgrad: bool,
    maximize: bool,
    decoupled: bool,
) -> GradientTransformation:
    _check_betas(betas, schedule_ok=True)
    core = A.scale_by_adam(betas[0], betas[1], eps, amsgrad=amsgrad)
    return _optimizer(name, lr, [core], maximize, weight_decay, decoupled)


def adamw(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float | Schedule, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    *,
    maximize: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""AdamW (Loshchilov & Hutter, 2019), as ``torch.optim.AdamW``: Adam with decoupled decay.

    .. math::
        \theta_{t+1} = \theta_t - \eta\Big(
            \frac{m_t/(1-\beta_1^t)}{\sqrt{\hat v_t}/\sqrt{1-\beta_2^t} + \epsilon}
            + \lambda\theta_t\Big)

    i.e. torch's ``θ ← θ(1 - ηλ)`` followed by the Adam step. Same as
    ``adam(..., decoupled_weight_decay=True)``; the default ``λ`` is ``1e-2``.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.adamw(lr=0.1, weight_decay=0.5)
        >>> p = {"w": torch.ones(1)}
        >>> u, s = opt.update({"w": torch.zeros(1)}, opt.init(p), p)
        >>> u["w"]
        tensor([-0.0500])
    """
    _reject_extra("adamw", unsupported)
    return _adam("adamw", lr, betas, eps, weight_decay, amsgrad, maximize, True)


def rmsprop(
    lr: ScalarOrSchedule = 1e-2,
    alpha: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    *,
    maximize: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""RMSprop (Hinton), as ``torch.optim.RMSprop``.

    .. math::
        s_t = \alpha s_{t-1} + (1-\alpha) g^2, \quad
        \bar g_t = \alpha \bar g_{t-1} + (1-\alpha) g, \quad
        a_t = \sqrt{s_t - \bar g_t^2} + \epsilon\ \text{(centered; else } \sqrt{s_t}+\epsilon)

    .. math::
        b_t = \mu b_{t-1} + g / a_t\ (b_0 = 0), \qquad
        \theta_{t+1} = \theta_t - \eta\, b_t\ \ (\text{or } \eta\, g/a_t \text{ when } \mu = 0)

    ``chain(scale(-1) if maximize, add_decayed_weights(λ), scale_by_rms(α, ε,
    centered), trace(μ), scale_by_learning_rate(η))``.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.rmsprop(lr=0.01, alpha=0.0, eps=0.0)
        >>> p = {"w": torch.zeros(1)}
        >>> opt.update({"w": torch.tensor([5.0])}, opt.init(p), p)[0]
        {'w': tensor([-0.0100])}
    """
    _reject_extra("rmsprop", unsupported)
    core = [
        A.scale_by_rms(alpha, eps, centered),
        *([trace(momentum)] if _nonzero(momentum) else []),
    ]
    return _optimizer("rmsprop", lr, core, maximize, weight_decay)


def _decayed_lr(lr: ScalarOrSchedule, lr_decay: float) -> ScalarOrSchedule:
    """Adagrad's ``η / (1 + (t-1) δ)`` as a schedule of the step count ``t-1``."""
    C.check_nonneg("lr_decay", lr_decay)  # no block sees it
    if not _nonzero(lr_decay):
        return lr
    C.check_lr(lr)  # scale_by_learning_rate sees the schedule below, not lr itself
    base: Callable[[torch.Tensor], Any] = lr if callable(lr) else (lambda count: lr)

    def schedule(count: torch.Tensor) -> torch.Tensor:
        return base(count) / (1.0 + count.to(torch.float64) * lr_decay)

    return schedule


def adagrad(
    lr: ScalarOrSchedule = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    maximize: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""Adagrad (Duchi et al., 2011), as ``torch.optim.Adagrad``.

    .. math::
        S_t = S_{t-1} + g^2\ (S_0 = \text{initial\_accumulator\_value}), \qquad
        \theta_{t+1} = \theta_t - \frac{\eta}{1 + (t-1)\delta}\,\frac{g}{\sqrt{S_t} + \epsilon}

    with ``δ = lr_decay``. ``chain(scale(-1) if maximize, add_decayed_weights(λ),
    scale_by_rss(S_0, ε), scale_by_learning_rate(η / (1 + count·δ)))``.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.adagrad(lr=0.5)
        >>> p = {"w": torch.zeros(1)}
        >>> opt.update({"w": torch.tensor([-2.0])}, opt.init(p), p)[0]
        {'w': tensor([0.5000])}
    """
    _reject_extra("adagrad", unsupported)
    core = [A.scale_by_rss(initial_accumulator_value, eps)]
    return _optimizer("adagrad", _decayed_lr(lr, lr_decay), core, maximize, weight_decay)


def adamax(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""Adamax (Kingma & Ba, 2015, §7), as ``torch.optim.Adamax``.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g, \quad
        n_t = \max(\beta_2 n_{t-1}, |g| + \epsilon), \quad
        \theta_{t+1} = \theta_t - \frac{\eta}{1-\beta_1^t}\,\frac{m_t}{n_t}

    ``chain(scale(-1) if maximize, add_decayed_weights(λ), scale_by_adamax(β1, β2, ε),
    scale_by_learning_rate(η))``.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.adamax(lr=0.1)
        >>> p = {"w": torch.zeros(1)}
        >>> opt.update({"w": torch.tensor([3.0])}, opt.init(p), p)[0]
        {'w': tensor([-0.1000])}
    """
    _reject_extra("adamax", unsupported)
    _check_betas(betas)
    core = [A.scale_by_adamax(betas[0], betas[1], eps)]
    return _optimizer("adamax", lr, core, maximize, weight_decay)


def nadam(
    lr: ScalarOrSchedule = 2e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""NAdam (Dozat, 2016), as ``torch.optim.NAdam``.

    .. math::
        \theta_{t+1} = \theta_t - \eta\Big(
            \frac{1-\mu_t}{1-\Pi_t}\frac{g}{d_t}
            + \frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\frac{m_t}{d_t}
            \ (+\lambda\theta_t\ \text{if decoupled})\Big)

    with :math:`\mu_t = \beta_1(1 - \frac12 0.96^{t\psi})`, :math:`\Pi_t = \prod_{i\le t}\mu_i`,
    :math:`d_t = \sqrt{v_t/(1-\beta_2^t)} + \epsilon` (see :func:`scale_by_nadam`),
    ``ψ = momentum_decay``.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.nadam()
        >>> p = {"w": torch.zeros(1)}
        >>> u, s = opt.update({"w": torch.ones(1)}, opt.init(p), p)
        >>> u["w"].shape
        torch.Size([1])
    """
    _reject_extra("nadam", unsupported)
    _check_betas(betas)
    core = [A.scale_by_nadam(betas[0], betas[1], eps, momentum_decay)]
    return _optimizer("nadam", lr, core, maximize, weight_decay, decoupled_weight_decay)


def radam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    *,
    maximize: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""RAdam (Liu et al., 2020), as ``torch.optim.RAdam``.

    .. math::
        \theta_{t+1} = \theta_t - \eta\Big(\hat m_t \cdot
            \begin{cases} r_t \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t}+\epsilon} & \rho_t > 5 \\
            1 & \text{otherwise}\end{cases}
            \ (+\lambda\theta_t\ \text{if decoupled})\Big)

    (``ρ_t``, ``r_t`` as in :func:`scale_by_radam`).

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.radam(lr=0.1)
        >>> p = {"w": torch.zeros(1)}
        >>> opt.update({"w": torch.tensor([2.0])}, opt.init(p), p)[0]  # SGD with momentum early on
        {'w': tensor([-0.2000])}
    """
    _reject_extra("radam", unsupported)
    _check_betas(betas)
    core = [A.scale_by_radam(betas[0], betas[1], eps)]
    return _optimizer("radam", lr, core, maximize, weight_decay, decoupled_weight_decay)


def adadelta(
    lr: ScalarOrSchedule = 1.0,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""Adadelta (Zeiler, 2012), as ``torch.optim.Adadelta`` (with torch's ``lr``, default 1).

    .. math::
        E[g^2]_t = \rho E[g^2]_{t-1} + (1-\rho) g^2, \quad
        \Delta_t = \frac{\sqrt{E[\Delta^2]_{t-1}+\epsilon}}{\sqrt{E[g^2]_t+\epsilon}}\, g, \quad
        E[\Delta^2]_t = \rho E[\Delta^2]_{t-1} + (1-\rho)\Delta_t^2, \quad
        \theta_{t+1} = \theta_t - \eta\,\Delta_t

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.adadelta()
        >>> p = {"w": torch.zeros(1)}
        >>> u, s = opt.update({"w": torch.ones(1)}, opt.init(p), p)
        >>> bool(u["w"] < 0)
        True
    """
    _reject_extra("adadelta", unsupported)
    core = [A.scale_by_adadelta(rho, eps)]
    return _optimizer("adadelta", lr, core, maximize, weight_decay)


# ---------------------------------------------------------------------------
# Rprop, ASGD, Adafactor, Muon: blocks from fdl.optim.sign, averaging, factored, orthogonal
# ---------------------------------------------------------------------------

from fdl.optim import factored  # noqa: E402
from fdl.optim.averaging import asgd_eta, asgd_mu, average_params  # noqa: E402
from fdl.optim.momentum import ema_trace  # noqa: E402
from fdl.optim.orthogonal import orthogonalize, scale_by_shape  # noqa: E402
from fdl.optim.sign import scale_by_rprop  # noqa: E402

__all__ += ["adafactor", "asgd", "muon", "rprop"]


def _torch_nonneg(message: str, value: Any) -> None:
    """``value >= 0`` (a number or a 1-element tensor), else ``ValueError(message)``."""
    v = C._number("value", value, "a number >= 0")
    if v is not None and not 0.0 <= v:
        raise ValueError(message)


def rprop(
    lr: ScalarOrSchedule = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50),
    *,
    maximize: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""Resilient backpropagation (Riedmiller & Braun, 1993), as ``torch.optim.Rprop``.

    .. math::
        \Delta_t = \operatorname{clamp}\big(f_t\,\Delta_{t-1},\ \Delta_{min},\ \Delta_{max}\big),
        \quad f_t = \eta_+,\ \eta_-,\ 1 \text{ for } g_t p_{t-1} >, <, = 0, \quad
        \theta_{t+1} = \theta_t - \operatorname{sign}(\tilde g_t)\,\Delta_t

    with ``Δ_0 = lr``, ``g̃_t = 0`` where the sign flipped (else ``g_t``) and
    ``p_t = g̃_t`` (see :func:`~fdl.optim.sign.scale_by_rprop`).
    ``chain(scale(-1) if maximize, scale_by_rprop(lr, etas, step_sizes), scale(-1))``.
    ``lr`` is only the initial step size: a schedule contributes its first value
    (torch reads ``lr`` once, when it builds the state).

    Args:
        lr: ``Δ_0``. etas: ``(η_-, η_+)``, ``0 < η_- < 1 < η_+``.
        step_sizes: ``(Δ_min, Δ_max)``. maximize: ascend the objective.

    Returns:
        A :class:`~fdl.optim.GradientTransformation`.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.rprop(lr=0.1)
        >>> p = {"w": torch.zeros(2)}
        >>> opt.update({"w": torch.tensor([3.0, -0.01])}, opt.init(p), p)[0]
        {'w': tensor([-0.1000,  0.1000])}
    """
    _reject_extra("rprop", unsupported)
    core = [scale_by_rprop(lr, etas, step_sizes)]
    return _chain((*([scale(-1.0)] if maximize else []), *core, scale(-1.0)), "rprop")


def asgd(
    lr: ScalarOrSchedule = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0,
    maximize: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""Averaged SGD (Polyak & Juditsky, 1992), as ``torch.optim.ASGD``.

    .. math::
        \theta_{t+1} = \theta_t(1 - \lambda\eta_t) - \eta_t\,(\pm g_t + w\,\theta_t), \qquad
        a_{t+1} = \begin{cases} \theta_{t+1} & \mu_t = 1 \\
            a_t + \mu_t(\theta_{t+1} - a_t) & \text{otherwise}\end{cases}

    with :math:`\eta_t = \gamma/(1 + \lambda\gamma (t-1))^{\alpha}` and
    :math:`\mu_t = 1/\max(1, t - 1 - t_0)` (``μ_1 = 1``; :func:`~fdl.optim.averaging.asgd_eta`,
    :func:`~fdl.optim.averaging.asgd_mu`), ``γ = lr``, ``w = weight_decay``.
    ``chain(scale(-1) if maximize, add_decayed_weights(w), add_decayed_weights(λ),
    scale_by_learning_rate(η_t), average_params(μ_t))``. The average ``a`` (torch's
    ``ax``) is read with :func:`fdl.optim.averaged_params`.

    fdl requires ``lambd >= 0`` (torch does not check it).

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.asgd(lr=0.1, lambd=0.0, t0=0)
        >>> p = {"w": torch.zeros(1)}
        >>> s = opt.init(p)
        >>> for g in (1.0, 3.0, 2.0):  # averaging starts at the third step (t - 1 > t0)
        ...     u, s = opt.update({"w": torch.tensor([g])}, s, p)
        ...     p = fdl.optim.apply_updates(p, u)
        >>> p["w"], fdl.optim.averaged_params(s)["w"]
        (tensor([-0.6000]), tensor([-0.5000]))
    """
    _reject_extra("asgd", unsupported)
    C.check_lr(lr)
    C.check_nonneg("weight_decay", weight_decay)
    C.check_nonneg("lambd", lambd)
    decay = [add_decayed_weights(lambd)] if _nonzero(lambd) else []
    core = [*decay, scale_by_learning_rate(asgd_eta(lr, lambd, alpha)), average_params(asgd_mu(t0))]
    l2 = [add_decayed_weights(weight_decay)] if _nonzero(weight_decay) else []
    return _chain((*([scale(-1.0)] if maximize else []), *l2, *core), "asgd")


def adafactor(
    lr: ScalarOrSchedule = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""Adafactor (Shazeer & Stern, 2018), as ``torch.optim.Adafactor``.

    .. math::
        \theta_{t+1} = \theta_t(1 - \eta\lambda)
            - \min\big(\eta, \tfrac{1}{\sqrt t}\big)\,
              \max\big(\epsilon_2, \mathrm{RMS}(\theta_t)\big)\,
              \frac{U_t}{\max(1, \mathrm{RMS}(U_t)/d)}, \qquad
        U_t = \frac{\pm g_t}{\sqrt{\max(\hat v_t, \epsilon_1^2)}}

    with ``v̂`` the factored second moment of
    :func:`~fdl.optim.factored.scale_by_factored_rms` (row and column means of
    ``g²`` for 2-D and larger parameters, the full ``v`` for vectors; weight
    ``t^{beta2_decay}``). ``chain(scale(-1) if maximize, scale_by_factored_rms(c,
    ε₁, d), scale_by_param_scale(ε₂), scale_by_relative_step(η, λ))``.

    Args:
        lr: ``η``, the cap of the relative step ``1/√t`` (and the decay's factor).
        beta2_decay: ``c <= 0``. eps: ``(ε₁, ε₂)``; ``ε₁ = None`` is the machine
            epsilon of each parameter's dtype. d: clipping threshold ``>= 1``.
        weight_decay: ``λ``. maximize: ascend the objective.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.adafactor()
        >>> p = {"w": torch.ones(2, 3)}
        >>> u, s = opt.update({"w": torch.ones(2, 3)}, opt.init(p), p)
        >>> u["w"]  # min(lr, 1) * RMS(θ) * g / |g|
        tensor([[-0.0100, -0.0100, -0.0100],
                [-0.0100, -0.0100, -0.0100]])
    """
    _reject_extra("adafactor", unsupported)
    if len(eps) != 2:
        raise ValueError(f"eps must be a pair (eps1, eps2); got {eps!r}")
    core = [
        factored.scale_by_factored_rms(beta2_decay, eps[0], d),
        factored.scale_by_param_scale(eps[1]),
        factored.scale_by_relative_step(lr, weight_decay),
    ]
    return _chain((*([scale(-1.0)] if maximize else []), *core), "adafactor")


def muon(
    lr: ScalarOrSchedule = 1e-3,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    *,
    ns_dtype: torch.dtype = torch.bfloat16,
    **unsupported: Any,
) -> GradientTransformation:
    r"""Muon (Jordan et al., 2024), as ``torch.optim.Muon``: orthogonalised momentum, 2-D only.

    .. math::
        b_t = \mu b_{t-1} + (1-\mu) g_t, \quad
        O_t = \mathrm{NS}^{(a,b,c)}_k\big((1-\mu) g_t + \mu b_t\ \text{(nesterov; else } b_t)\big),
        \quad \theta_{t+1} = \theta_t - \eta\big(r(R, C)\, O_t + \lambda\theta_t\big)

    with ``NS`` the Newton–Schulz iteration of :func:`~fdl.optim.orthogonal.newton_schulz`
    (in bfloat16, as torch) and ``r`` the ``adjust_lr_fn`` ratio of
    :func:`~fdl.optim.orthogonal.scale_by_shape`. ``chain(ema_trace(μ, nesterov),
    orthogonalize(coefficients, k, ε), scale_by_shape(adjust_lr_fn),
    add_decayed_weights(λ), scale_by_learning_rate(η))``.

    Every parameter must be a matrix (``init`` raises torch's error otherwise);
    as with torch, give the others AdamW::

        matrices = lambda p: fdl.tree.map(lambda x: x.ndim == 2, p)
        others = lambda p: fdl.tree.map(lambda x: x.ndim != 2, p)
        opt = fdl.optim.chain(
            fdl.optim.masked(fdl.optim.muon(0.02), matrices),
            fdl.optim.masked(fdl.optim.adamw(3e-4), others),
        )

    Args:
        lr: ``η``. weight_decay: ``λ`` (decoupled). momentum: ``μ``.
        nesterov: Nesterov momentum. ns_coefficients: ``(a, b, c)``. eps: ``ε``.
        ns_steps: ``k < 100``. adjust_lr_fn: ``None``/``"original"``,
            ``"match_rms_adamw"`` or ``"spectral_unclamped"``.
        ns_dtype: the dtype of the Newton–Schulz iteration (fdl only; torch's is
            bfloat16). A wider one makes the update smooth in its inputs, e.g. to
            differentiate through it.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.muon(lr=0.1, weight_decay=0.0)
        >>> p = {"w": torch.zeros(2, 2)}
        >>> u, s = opt.update({"w": torch.eye(2)}, opt.init(p), p)
        >>> u["w"].shape
        torch.Size([2, 2])
    """
    _reject_extra("muon", unsupported)
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not callable(lr):
        _torch_nonneg(f"Learning rate should be >= 0 but is: {lr}", lr)
    _torch_nonneg(f"momentum should be >= 0 but is: {momentum}", momentum)
    _torch_nonneg(f"weight decay should be >= 0 but is: {weight_decay}", weight_decay)
    core = [
        ema_trace(momentum, nesterov),
        orthogonalize(ns_coefficients, ns_steps, eps, dtype=ns_dtype),
        scale_by_shape(adjust_lr_fn),
        *([add_decayed_weights(weight_decay)] if _nonzero(weight_decay) else []),
    ]
    return _chain((*core, scale_by_learning_rate(lr)), "muon")


# ---------------------------------------------------------------------------
# SparseAdam over dense gradients (fdl.optim.sparse)
# ---------------------------------------------------------------------------

from fdl.optim.sparse import scale_by_sparse_adam  # noqa: E402

__all__ += ["sparse_adam"]


def sparse_adam(
    lr: ScalarOrSchedule = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    maximize: bool = False,
    **unsupported: Any,
) -> GradientTransformation:
    r"""SparseAdam, as ``torch.optim.SparseAdam`` given ``g.to_sparse()``: Adam where ``g ≠ 0``.

    .. math::
        \theta_i \leftarrow \theta_i - \eta\,\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,
            \frac{m_i}{\sqrt{v_i} + \epsilon} \quad (g_i \ne 0), \qquad
        \theta_i,\ m_i,\ v_i \text{ unchanged where } g_i = 0

    (see :func:`~fdl.optim.sparse.scale_by_sparse_adam`). fdl's gradients are dense:
    the entries that move are the non-zero ones, those ``g.to_sparse()`` stores. A
    sparse gradient that stores explicit zeros (torch moves those entries) has no
    dense counterpart. ``chain(scale(-1) if maximize, scale_by_sparse_adam(β1, β2, ε),
    scale_by_learning_rate(η))``.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.sparse_adam(lr=0.1)
        >>> p = {"emb": torch.zeros(3, 2)}
        >>> g = {"emb": torch.tensor([[0.0, 0.0], [1.0, -2.0], [0.0, 0.0]])}  # one row looked up
        >>> u = opt.update(g, opt.init(p), p)[0]["emb"]
        >>> u[1], bool((u[[0, 2]] == 0).all())
        (tensor([-0.1000,  0.1000]), True)
    """
    _reject_extra("sparse_adam", unsupported)
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    if not callable(lr):
        value = C._number("lr", lr, "a number > 0")
        if value is not None and not 0.0 < value:
            raise ValueError(f"Invalid learning rate: {lr}")
    _check_betas(betas)
    core = [scale_by_sparse_adam(betas[0], betas[1], eps)]
    return _chain(
        (*([scale(-1.0)] if maximize else []), *core, scale_by_learning_rate(lr)), "sparse_adam"
    )
