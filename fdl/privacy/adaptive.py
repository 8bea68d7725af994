"""DP-SGD with adaptive clipping: the clip norm follows a quantile of the gradient norms.

Andrew, Thakkar, McMahan and Ramaswamy, *Differentially Private Learning with
Adaptive Clipping* (NeurIPS 2021). Each step clips with the current norm ``C``,
privately estimates the fraction ``b`` of examples it left unclipped, and moves
``C`` geometrically towards the target quantile ``γ``::

    f_i  = m_i · min(1, C / (n_i + 1e-6))                   (as DP-SGD, n_i = ‖grad_i‖)
    u_i  = 1[C / (n_i + 1e-6) >= 1]                          (example i left unclipped)
    g    = (Σ_i f_i · grad_i + σ_grad·C·z) / B_e             (the private gradient)
    b    = (Σ_i m_i · (u_i − ½) + σ_b·z_b) / B_e + ½         (private unclipped fraction)
    C'   = clamp(C · exp(−η_C · (b − γ)), C_min, C_max)     (the next step's clip norm)

with ``z ~ N(0, I)`` and ``z_b ~ N(0, 1)`` from the step's key. Centring the
indicators (``u_i − ½``) makes the count's sensitivity ½, which is what lets
Theorem 1 of the paper give the pair ``(g, b)`` the privacy of one Gaussian
mechanism of multiplier ``σ``::

    σ^-2 = σ_grad^-2 + (2σ_b)^-2,   so   σ_grad = (σ^-2 − (2σ_b)^-2)^(-1/2)

The accountant (:func:`fdl.privacy.epsilon`) therefore counts each step with
the ``noise_multiplier`` ``σ`` given: the quantile estimate is paid for by the
larger gradient noise ``σ_grad > σ``.

The clip norm is explicit state, an :class:`AdaptiveClipState` holding a 0-d
tensor that goes into the step and comes out updated, so a compiled step
never recompiles as ``C`` moves.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fdl import _step
from fdl import random as _random
from fdl import train as _train
from fdl import tree as _tree
from fdl._compile import CompileArg
from fdl._dp_checks import check_expected, check_mask, check_method, check_noise, check_number
from fdl._per_sample import core as _core
from fdl.optim.base import GradientTransformation
from fdl.privacy.dp_sgd import CLIP_EPS, add_noise

__all__ = [
    "AdaptiveClipState",
    "adaptive_dp_grads",
    "gradient_noise_multiplier",
    "init_adaptive_clip",
    "make_adaptive_dp_train_step",
]


class AdaptiveClipState(NamedTuple):
    """The adaptive clip norm carried from step to step.

    Attributes:
        clip: ``()`` floating tensor, the clip norm ``C`` the next step uses.
    """

    clip: torch.Tensor


def init_adaptive_clip(
    initial_clip: float,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> AdaptiveClipState:
    """The state of a run's first step: ``C = initial_clip`` as a 0-d tensor.

    Args:
        initial_clip: ``C_0 > 0``, the clip norm of the first step (not clamped:
            the bounds apply from the first update on, as in Opacus).
        dtype: the dtype ``C`` and the quantile estimate are computed in
            (float64 by default, whatever the params' dtype).
        device: where the tensor lives (default torch's current default).

    Returns:
        :class:`AdaptiveClipState`.

    Example:
        >>> init_adaptive_clip(0.5)
        AdaptiveClipState(clip=tensor(0.5000, dtype=torch.float64))
    """
    c = check_number(
        "initial_clip", initial_clip, "a positive finite number", lambda v: 0.0 < v < math.inf
    )
    if not dtype.is_floating_point:
        raise ValueError(f"init_adaptive_clip: dtype must be a floating dtype, got {dtype}")
    return AdaptiveClipState(torch.tensor(c, dtype=dtype, device=device))


def gradient_noise_multiplier(noise_multiplier: float, unclipped_num_std: float) -> float:
    """``σ_grad = (σ^-2 − (2σ_b)^-2)^(-1/2)``: the gradient noise that leaves ``σ`` in total.

    Theorem 1 of Andrew et al.: the private gradient with multiplier
    ``σ_grad`` and the centred unclipped count with noise ``σ_b`` (sensitivity
    ½) together are as private as one Gaussian mechanism with multiplier
    ``σ``. ``σ = 0`` (no privacy) gives ``σ_grad = 0``.

    Args:
        noise_multiplier: ``σ >= 0``, the multiplier the accountant counts.
        unclipped_num_std: ``σ_b >= 0``, the std of the noise on the count;
            it must exceed ``σ / 2`` when ``σ > 0``.

    Returns:
        ``σ_grad`` (a float, ``>= σ``).

    Raises:
        ValueError: ``σ > 0`` and ``2σ_b <= σ`` (no finite ``σ_grad`` exists),
            or an argument out of range.

    Example:
        >>> round(gradient_noise_multiplier(1.0, 10.0), 6)
        1.001252
    """
    sigma = check_noise(noise_multiplier)
    sigma_b = check_number(
        "unclipped_num_std", unclipped_num_std, "a finite number >= 0", lambda s: 0 <= s < math.inf
    )
    if sigma == 0.0:
        return 0.0
    if not 2.0 * sigma_b > sigma:
        raise ValueError(
            f"unclipped_num_std must be > noise_multiplier / 2 = {sigma / 2} so that the "
            f"gradient noise (σ^-2 - (2σ_b)^-2)^(-1/2) exists (Theorem 1 of Andrew et al.), "
            f"got {unclipped_num_std}"
        )
    return (sigma**-2 - (2 * sigma_b) ** -2) ** -0.5


class _Rule(NamedTuple):
    """The checked constants of one adaptive-clipping rule."""

    sigma_grad: float
    sigma_b: float
    quantile: float
    clip_lr: float
    min_clip: float
    max_clip: float
    b_e: float


def _rule(
    noise_multiplier: float,
    target_quantile: float,
    clip_lr: float,
    expected_batch_size: float,
    unclipped_num_std: float,
    min_clip: float,
    max_clip: float,
    method: str,
) -> _Rule:
    b_e = check_expected(expected_batch_size)
    check_method(method)
    sigma_grad = gradient_noise_multiplier(noise_multiplier, unclipped_num_std)
    quantile = check_number("target_quantile", target_quantile, "in [0, 1]", lambda q: 0 <= q <= 1)
    lr = check_number("clip_lr", clip_lr, "a finite number >= 0", lambda v: 0 <= v < math.inf)
    lo = check_number("min_clip", min_clip, "a finite number >= 0", lambda v: 0 <= v < math.inf)
    hi = check_number("max_clip", max_clip, f"> min_clip = {lo}", lambda v: v > lo)
    return _Rule(sigma_grad, float(unclipped_num_std), quantile, lr, lo, hi, b_e)


def _clip_of(clip_state: Any) -> torch.Tensor:
    if not isinstance(clip_state, AdaptiveClipState):
        raise TypeError(
            "clip_state must be an AdaptiveClipState (see fdl.privacy.init_adaptive_clip), "
            f"got {type(clip_state).__name__}"
        )
    clip = clip_state.clip
    if not (isinstance(clip, torch.Tensor) and clip.dim() == 0 and clip.is_floating_point()):
        what = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise ValueError(f"clip_state.clip must be a 0-d floating tensor, got {what}")
    return clip


def _next_clip(
    rule: _Rule, clip: torch.Tensor, centred: torch.Tensor, key: _random.Key
) -> torch.Tensor:
    """``clamp(C · exp(−η_C (b − γ)), C_min, C_max)`` with ``b`` the noised centred count."""
    if rule.sigma_b > 0.0:
        centred = centred + rule.sigma_b * _random.normal(key, (), dtype=clip.dtype)
    b = centred / rule.b_e + 0.5
    new = clip * torch.exp(-rule.clip_lr * (b - rule.quantile))
    return torch.clamp(new, min=rule.min_clip, max=rule.max_clip)


def adaptive_dp_grads(
    loss_fn: Callable[..., Any],
    *,
    noise_multiplier: float,
    target_quantile: float,
    clip_lr: float,
    expected_batch_size: float,
    unclipped_num_std: float,
    min_clip: float = 0.0,
    max_clip: float = math.inf,
    has_aux: bool = False,
    method: str = "auto",
) -> Callable[..., Any]:
    """Build ``fn(params, clip_state, key, *batch, mask=None) -> (grads, clip_state, loss[, aux])``.

    With ``C = clip_state.clip``, ``k_grad, k_b = fdl.random.split(key)``::

        f_i   = m_i · min(1, C / (n_i + 1e-6)),   u_i = 1[C / (n_i + 1e-6) >= 1]
        grads = (Σ_i f_i · grad_i + σ_grad·C·z) / B_e,   σ_grad·z = add_noise(0, k_grad, σ_grad, 1)
        b     = (Σ_i m_i · (u_i − ½) + σ_b · z_b) / B_e + ½,   z_b = normal(k_b, (), C.dtype)
        C'    = clamp(C · exp(−η_C · (b − γ)), C_min, C_max)

    and ``σ_grad`` from :func:`gradient_noise_multiplier`. ``grads`` uses ``C``;
    the returned state holds ``C'`` for the next step.

    Args:
        loss_fn: the ordinary batched loss ``loss_fn(params, *batch)``.
        noise_multiplier: ``σ >= 0``, the multiplier of the whole step (what the
            accountant counts); the gradient gets ``σ_grad >= σ``.
        target_quantile: ``γ`` in ``[0, 1]``, the fraction of examples to leave
            unclipped (Opacus's ``target_unclipped_quantile``; 0.5: the median).
        clip_lr: ``η_C >= 0``, the geometric rate (Opacus's ``clipbound_learning_rate``);
            ``C`` changes by at most a factor ``exp(η_C)`` a step without noise.
        expected_batch_size: ``B_e > 0``, the divisor of both sums (``q · N``).
        unclipped_num_std: ``σ_b``, the std of the noise on the count; ``> σ / 2``
            when ``σ > 0`` (the paper suggests ``B_e / 20``).
        min_clip, max_clip: the bounds ``C`` is clamped to after each update
            (Opacus's ``min_clipbound``, ``max_clipbound``); default unbounded.
        has_aux: ``loss_fn`` returns ``(loss, aux)``.
        method: ``"auto"``, ``"rules"`` or ``"vmap"`` (see :mod:`fdl.per_sample`).

    Returns:
        The function (pure). ``loss`` (and ``aux``) are ``loss_fn`` on the whole
        batch given, masked rows included: for monitoring only.

    Note:
        Opacus's ``AdaClipDPOptimizer`` divides the uncentred count
        ``Σ_i u_i + σ_b·z_b`` by the number of examples in the batch, which
        under Poisson sampling is itself private. fdl divides the centred
        count by the public ``B_e`` (as TF Privacy's quantile estimator does),
        so the count's sensitivity is the ½ that ``σ_grad``'s ``2σ_b`` assumes.
        The two agree exactly when the batch holds ``B_e`` examples.

    Example:
        >>> import torch, torch.nn.functional as F, fdl
        >>> loss_fn = lambda p, x, y: F.mse_loss(F.linear(x, p["w"]), y)
        >>> fn = adaptive_dp_grads(loss_fn, noise_multiplier=0.0, target_quantile=0.5,
        ...                        clip_lr=0.2, expected_batch_size=4, unclipped_num_std=0.0)
        >>> p = {"w": torch.ones(1, 2)}
        >>> g, s, loss = fn(p, init_adaptive_clip(1.0), fdl.random.key(0), torch.ones(4, 2),
        ...                 torch.zeros(4, 1))
        >>> g["w"]  # each example's gradient (4, 4) is clipped to norm 1
        tensor([[0.7071, 0.7071]])
        >>> s.clip  # none left unclipped: b = 0, C' = exp(0.2 · 0.5)
        tensor(1.1052, dtype=torch.float64)
    """
    rule = _rule(
        noise_multiplier,
        target_quantile,
        clip_lr,
        expected_batch_size,
        unclipped_num_std,
        min_clip,
        max_clip,
        method,
    )

    def fn(
        params: Any,
        clip_state: AdaptiveClipState,
        key: _random.Key,
        *batch: Any,
        mask: torch.Tensor | None = None,
    ) -> Any:
        clip = _clip_of(clip_state)
        loss, aux, rep, _ = _core.decompose(
            loss_fn, params, batch, has_aux=has_aux, chunk_size=None, method=method, need_loss=True
        )
        norms = rep.sq_norms().sqrt()  # (B,)
        scale = torch.clamp(clip / (norms + CLIP_EPS), max=1.0)  # (B,) clip factors before m_i
        centred = (scale >= 1.0).to(clip.dtype) - 0.5  # (B,) u_i − ½
        if mask is not None:
            m = check_mask(mask, norms.shape[0])
            scale = scale * m.to(scale.dtype)
            centred = centred * m.to(clip.dtype)
        k_grad, k_b = _random.split(key)
        summed = _tree.unflatten(_tree.structure(params), rep.weighted_sum(scale))
        if rule.sigma_grad > 0.0:
            noise = add_noise(_tree.zeros_like(summed), k_grad, rule.sigma_grad, 1.0)
            summed = _tree.map(lambda s, z: s + clip * z, summed, noise)
        grads = _tree.map(lambda t: t / rule.b_e, summed)
        new_state = AdaptiveClipState(_next_clip(rule, clip, centred.sum(), k_b))
        return (grads, new_state, loss, aux) if has_aux else (grads, new_state, loss)

    return fn


def make_adaptive_dp_train_step(
    loss_fn: _core.LossFn,
    optimizer: GradientTransformation,
    *,
    has_aux: bool = False,
    compile: CompileArg = False,
    donate: bool = False,
    **rule: Any,
) -> Callable[..., Any]:
    """Build ``step(params, opt_state, clip_state, key, *batch, mask=None)``.

    It returns ``(params, opt_state, clip_state, loss[, aux])``: the
    :func:`fdl.train.make_train_step` core with :func:`adaptive_dp_grads` as
    its gradient function, i.e. ``grads, clip_state, loss = adaptive_dp_grads(
    loss_fn, **rule)(params, clip_state, key, *batch, mask=mask)``, then
    ``updates, opt_state = optimizer.update(grads, opt_state, params)`` and
    ``params = fdl.optim.apply_updates(params, updates)``.

    Args:
        loss_fn: the ordinary batched loss.
        optimizer: any ``fdl.optim`` ``GradientTransformation``.
        has_aux: ``loss_fn`` returns ``(loss, aux)``; the step returns ``aux`` fifth.
        compile: as for :func:`fdl.privacy.make_dp_train_step` (``C`` is a
            tensor input, so a compiled step never recompiles as it moves).
        donate: write the new params and optimizer state into the buffers of
            the ones passed in (see :func:`fdl.train.make_train_step`).
        rule: the keyword arguments of :func:`adaptive_dp_grads`, checked
            here: ``noise_multiplier``, ``target_quantile``, ``clip_lr``,
            ``expected_batch_size``, ``unclipped_num_std`` (required),
            ``min_clip``, ``max_clip``, ``method``.

    Returns:
        The step function (pure). Start from :func:`init_adaptive_clip`, pass
        the returned ``clip_state`` and a fresh key every step.

    Example:
        >>> import torch, torch.nn.functional as F, fdl
        >>> loss_fn = lambda p, x, y: F.mse_loss(F.linear(x, p["w"]), y)
        >>> opt = fdl.optim.sgd(lr=0.1)
        >>> step = make_adaptive_dp_train_step(
        ...     loss_fn, opt, noise_multiplier=1.0, target_quantile=0.5, clip_lr=0.2,
        ...     expected_batch_size=4, unclipped_num_std=2.0)
        >>> p, clip = {"w": torch.zeros(1, 2)}, init_adaptive_clip(1.0)
        >>> p, s, clip, loss = step(p, opt.init(p), clip, fdl.random.key(0), torch.ones(4, 2),
        ...                         torch.ones(4, 1))
        >>> clip.clip.shape
        torch.Size([])
    """
    _step.check_optimizer(optimizer, "make_adaptive_dp_train_step")
    grad_fn = functools.partial(adaptive_dp_grads, **rule)
    return _train.make_train_step(
        loss_fn, optimizer, has_aux=has_aux, compile=compile, grad_fn=grad_fn, donate=donate
    )
