"""DP-SGD: clipped per-example gradients plus Gaussian noise, and Poisson batches.

One private gradient, for a batch of examples ``i`` with inclusion mask ``m_i``::

    n_i   = ‖grad_i‖                              (global L2 norm over the params pytree)
    f_i   = m_i · min(1, C / (n_i + 1e-6))         (clip factor, as Opacus's flat clipping)
    g     = (Σ_i f_i · grad_i + σ·C·z) / B_e       (z ~ N(0, I) from an fdl.random key)

with ``C = max_grad_norm``, ``σ = noise_multiplier`` and ``B_e =
expected_batch_size`` (``sample_rate · dataset size`` under Poisson sampling).
``g`` goes to any ``fdl.optim`` optimizer like an ordinary gradient.

Poisson sampling includes every example independently with probability
``q``; the batch size varies. :func:`poisson_sample` returns a fixed number
``max_size`` of indices and a mask, so the compiled step sees one shape and
never recompiles; masked rows contribute nothing.

On the rules path (see :mod:`fdl.per_sample`) the norms come from the
recorded layer factors and ``Σ_i f_i grad_i`` is one ordinary weight-gradient
computation per layer, so a private step costs about one batch gradient;
per-example gradients are never materialised for linear layers.

Two variants of the same gradient: per-layer clipping (``max_grad_norm`` a
pytree of bounds ``C_l``, each leaf clipped on its own, noise ``σ·‖(C_l)‖₂``)
and virtual steps (``micro_batch_size``: the clipped sum built over row
chunks of a large padded batch, noised once). Overflow of a Poisson draw
beyond ``max_size`` is counted (``return_overflow=True``) or warned about.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

from fdl import _eager, _step
from fdl import random as _random
from fdl import train as _train
from fdl import tree as _tree
from fdl._compile import CompileArg
from fdl._dp_checks import (
    check_bounds_fit,
    check_clip,
    check_clip_bounds,
    check_dp_args,
    check_micro_batch_size,
    check_noise,
    check_not_accumulating,
    check_rate,
    clip_norm,
    reject_accumulation,
)
from fdl._per_sample import core as _core
from fdl.privacy._per_layer import leaf_sq_norms, leaf_weighted_sums

__all__ = [
    "add_noise",
    "clip_factors",
    "clip_per_sample",
    "dp_grads",
    "make_dp_train_step",
    "poisson_max_size",
    "poisson_sample",
]

CLIP_EPS = 1e-6


def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Per-example clip factors ``min(1, C / (norms + 1e-6))``.

    Args:
        norms: ``(B,)`` per-example gradient norms.
        max_grad_norm: ``C > 0``.

    Returns:
        ``(B,)`` factors in ``(0, 1]``.

    Example:
        >>> clip_factors(torch.tensor([0.5, 4.0]), 1.0)
        tensor([1.0000, 0.2500])
    """
    c = check_clip(max_grad_norm)
    return torch.clamp(c / (norms + CLIP_EPS), max=1.0)


def clip_per_sample(grads: Any, max_grad_norm: float) -> Any:
    """Scale each example's gradient (leading axis of every leaf) to norm at most ``C``.

    ``grads_i · min(1, C / (‖grads_i‖ + 1e-6))`` with the norm over the whole pytree.

    Args:
        grads: per-example gradients, e.g. from :func:`fdl.per_sample_grads`.
        max_grad_norm: ``C > 0``.

    Returns:
        The clipped per-example gradients (same structure).

    Example:
        >>> g = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}
        >>> clip_per_sample(g, 1.0)["w"]
        tensor([[0.6000, 0.8000],
                [0.3000, 0.4000]])
    """
    leaves = _tree.leaves(grads)
    sq = sum(t.flatten(1).square().sum(1) for t in leaves)
    f = clip_factors(sq.sqrt(), max_grad_norm)
    return _tree.map(lambda t: t * f.reshape((-1,) + (1,) * (t.dim() - 1)).to(t.dtype), grads)


def add_noise(grads: Any, key: _random.Key, noise_multiplier: float, max_grad_norm: Any) -> Any:
    """``grads + σ·C·z`` with ``z ~ N(0, I)`` drawn from ``key``.

    One ``fdl.random.normal(key, (total size,))`` draw is split over the
    leaves in their flattening order (float64 if any leaf is float64). With
    per-layer bounds ``C_l`` (a pytree or sequence, see :func:`dp_grads`) the
    sensitivity is ``C = ‖(C_l)‖₂ = sqrt(Σ_l C_l²)``, as Opacus's per-layer
    clipping.

    Args:
        grads: a pytree of summed clipped gradients.
        key: an ``fdl.random`` key.
        noise_multiplier: ``σ >= 0``.
        max_grad_norm: ``C > 0``, or per-layer bounds ``C_l > 0``.

    Returns:
        The noised pytree.

    Example:
        >>> import fdl
        >>> g = add_noise({"w": torch.zeros(10000)}, fdl.random.key(0), 2.0, 0.5)
        >>> round(float(g["w"].std()), 1)
        1.0
    """
    std = check_noise(noise_multiplier) * clip_norm(check_clip_bounds(max_grad_norm))
    return _add_noise(grads, key, std)


def _add_noise(grads: Any, key: _random.Key, std: float) -> Any:
    flat, treedef = _tree.flatten(grads)
    if not flat:
        return grads
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in flat) else torch.float32
    sizes = [t.numel() for t in flat]
    zs = torch.split(_random.normal(key, (sum(sizes),), dtype=dtype), sizes)
    noised = [t + (z.reshape(t.shape) * std).to(t.dtype) for t, z in zip(flat, zs, strict=True)]
    return _tree.unflatten(treedef, noised)


def dp_grads(
    loss_fn: Callable[..., Any],
    *,
    noise_multiplier: float,
    max_grad_norm: Any,
    expected_batch_size: float,
    has_aux: bool = False,
    method: str = "auto",
    micro_batch_size: int | None = None,
) -> Callable[..., Any]:
    """Build ``fn(params, key, *batch, mask=None) -> (private_grads, loss[, aux])``.

    ``private_grads = (Σ_i f_i · grad_i + σ·C·z) / B_e`` with
    ``f_i = m_i · min(1, C / (‖grad_i‖ + 1e-6))``, ``grad_i`` the gradient of
    ``loss_fn`` on example ``i`` alone (see :func:`fdl.per_sample_grads`),
    ``m_i`` the mask (all ones when ``None``) and ``z ~ N(0, I)`` from ``key``.

    **Per-layer clipping** (Opacus's ``clipping="per_layer"``): when
    ``max_grad_norm`` holds one bound ``C_l`` per params leaf ``l``, each leaf of
    each example is clipped on its own and the noise uses ``C = ‖(C_l)‖₂``::

        f_{i,l} = m_i · min(1, C_l / (‖grad_{i,l}‖ + 1e-6))
        private_grads_l = (Σ_i f_{i,l} · grad_{i,l} + σ·‖(C_l)‖₂·z_l) / B_e

    **Virtual steps**: with ``micro_batch_size=k`` the padded batch is processed in
    row chunks of ``k`` (the last may be smaller); each chunk's clipped sum is
    added up and the noise is drawn once for the whole batch, so the result is
    the same as without chunks while only one chunk's per-example state exists
    at a time. The accountant counts one step per call.

    Args:
        loss_fn: the ordinary batched loss ``loss_fn(params, *batch)``.
        noise_multiplier: ``σ >= 0``.
        max_grad_norm: ``C > 0``; or per-layer bounds: a pytree of numbers with
            the params' structure, or a flat list/tuple with one number per params
            leaf in flattening order (``fdl.tree.paths(params)``: dict keys sorted,
            unlike ``module.parameters()``).
        expected_batch_size: ``B_e > 0``, the divisor (``q · N`` for Poisson batches).
        has_aux: ``loss_fn`` returns ``(loss, aux)``.
        method: ``"auto"``, ``"rules"`` or ``"vmap"`` (see :mod:`fdl.per_sample`).
        micro_batch_size: rows per chunk (``None``: the whole batch at once).

    Returns:
        The function. ``loss`` (and ``aux``) are ``loss_fn`` on the whole batch
        given, masked rows included: use them for monitoring only. With
        ``micro_batch_size``, ``loss`` is the row-weighted mean of the chunks'
        losses (the batch loss for a mean-reduced ``loss_fn``) and ``aux`` a list
        with one entry per chunk.

    Example:
        >>> import torch, torch.nn.functional as F, fdl
        >>> loss_fn = lambda p, x, y: F.mse_loss(F.linear(x, p["w"]), y)
        >>> fn = dp_grads(loss_fn, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=4)
        >>> p = {"w": torch.ones(1, 2)}
        >>> g, loss = fn(p, fdl.random.key(0), torch.ones(4, 2), torch.zeros(4, 1))
        >>> g["w"]  # each example's gradient (4, 4) is clipped to norm 1
        tensor([[0.7071, 0.7071]])
        >>> chunked = dp_grads(loss_fn, noise_multiplier=0.0, max_grad_norm=1.0,
        ...                    expected_batch_size=4, micro_batch_size=3)
        >>> chunked(p, fdl.random.key(0), torch.ones(4, 2), torch.zeros(4, 1))[0]["w"]
        tensor([[0.7071, 0.7071]])
    """
    sigma, clip, b_e = check_dp_args(noise_multiplier, max_grad_norm, expected_batch_size, method)
    chunk = check_micro_batch_size(micro_batch_size)
    std = sigma * clip_norm(clip)
    bounds = None if isinstance(clip, float) else _tree.leaves(clip)  # C_l per params leaf

    def clipped_sum(params: Any, rows: tuple[Any, ...], mask: Any, bounds: Any) -> tuple[Any, ...]:
        # one (micro-)batch; the representation is freed when this returns
        loss, aux, rep, _ = _core.decompose(
            loss_fn, params, rows, has_aux=has_aux, chunk_size=None, method=method, need_loss=True
        )
        return _clip_and_sum(rep, mask, clip, bounds), loss, aux

    def fn(params: Any, key: _random.Key, *batch: Any, mask: torch.Tensor | None = None) -> Any:
        n = _core.batch_size(batch)
        if mask is not None and tuple(mask.shape) != (n,):
            raise ValueError(
                f"mask must have shape {(n,)} (one entry per example), got {tuple(mask.shape)}"
            )
        if bounds is not None and _eager.validating():
            check_bounds_fit(clip, params, "dp_grads")
        if chunk is None:
            total, loss, aux = clipped_sum(params, batch, mask, bounds)
        else:
            total, loss, aux = _in_chunks(clipped_sum, params, batch, mask, bounds, chunk)
        summed = _tree.unflatten(_tree.structure(params), total)
        noised = _add_noise(summed, key, std)
        grads = _tree.map(lambda t: t / b_e, noised)
        return (grads, loss, aux) if has_aux else (grads, loss)

    return fn


def _clip_and_sum(
    rep: Any, mask: torch.Tensor | None, clip: Any, bounds: list[float] | None
) -> list[torch.Tensor]:
    """Per params leaf, ``Σ_i f_i grad_i`` (flat clipping) or ``Σ_i f_{i,l} grad_{i,l}``."""
    if bounds is None:
        norms = rep.sq_norms().sqrt()
        f = torch.clamp(clip / (norms + CLIP_EPS), max=1.0)
        if mask is not None:
            f = f * mask.to(f.dtype)
        return rep.weighted_sum(f)
    fs = []
    for c_l, sq in zip(bounds, leaf_sq_norms(rep), strict=True):
        f_l = torch.clamp(c_l / (sq.sqrt() + CLIP_EPS), max=1.0)  # per-layer clip factors
        fs.append(f_l if mask is None else f_l * mask.to(f_l.dtype))
    return leaf_weighted_sums(rep, fs)


def _in_chunks(
    clipped_sum: Callable[..., tuple[Any, ...]],
    params: Any,
    batch: tuple[Any, ...],
    mask: torch.Tensor | None,
    bounds: list[float] | None,
    chunk: int,
) -> tuple[list[torch.Tensor], torch.Tensor, list[Any]]:
    """``clipped_sum`` over row chunks of ``chunk``, added up; the loss is row-weighted."""
    n = _core.batch_size(batch)
    total: list[torch.Tensor] = []
    loss = None
    auxes = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        rows = _tree.map(lambda t, a=start, b=stop: t[a:b], batch)  # (stop - start, ...)
        part_mask = None if mask is None else mask[start:stop]
        part, part_loss, aux = clipped_sum(params, rows, part_mask, bounds)
        total = part if not total else [a + b for a, b in zip(total, part, strict=True)]
        weighted = part_loss * ((stop - start) / n)
        loss = weighted if loss is None else loss + weighted
        auxes.append(aux)
    return total, loss, auxes


def make_dp_train_step(
    loss_fn: Callable[..., Any],
    optimizer: Any,
    *,
    noise_multiplier: float,
    max_grad_norm: Any,
    expected_batch_size: float,
    has_aux: bool = False,
    method: str = "auto",
    micro_batch_size: int | None = None,
    compile: CompileArg = False,
    donate: bool = False,
) -> Callable[..., Any]:
    """Build ``step(params, opt_state, key, *batch, mask=None) -> (params, opt_state, loss)``.

    :func:`fdl.train.make_train_step` with :func:`dp_grads` as its gradient
    function: ``grads, loss = dp_grads(loss_fn, ...)(params, key, *batch,
    mask=mask)``, then ``updates, opt_state = optimizer.update(grads,
    opt_state, params)`` and ``params = fdl.optim.apply_updates(params, updates)``.

    Args:
        loss_fn: the ordinary batched loss.
        optimizer: any ``fdl.optim`` ``GradientTransformation``.
        noise_multiplier, max_grad_norm, expected_batch_size, has_aux, method:
            as for :func:`dp_grads` (``max_grad_norm`` may hold per-layer bounds).
        micro_batch_size: virtual steps: the padded logical batch is clipped and
            summed in row chunks of this size and noised once (see
            :func:`dp_grads`); the step's memory is that of one chunk.
        compile: ``True`` wraps the step in ``torch.compile(fullgraph=True)``
            (per-example gradients by ``vmap``, or by the traced rules with
            ``method="rules"``, see :mod:`fdl.per_sample`); a dict gives
            ``torch.compile`` options.
            ``False`` (default) runs eagerly.
        donate: write the results into the buffers of the params and state
            passed in (see :func:`fdl.train.make_train_step`).

    Returns:
        The step function (pure); with ``has_aux`` it returns ``aux`` as a
        fourth value. Pass a fresh key every step (e.g.
        ``fdl.random.fold_in(key, step)``) and the Poisson mask.

    Raises:
        ValueError: ``optimizer`` accumulates gradients (:func:`fdl.optim.multi_steps`,
            :class:`fdl.optim.MultiSteps`; a ``chain`` holding one is seen in the
            state on the first call). Each step is one noised release: use
            ``micro_batch_size`` for a logical batch larger than memory.

    Example:
        >>> import torch, torch.nn.functional as F, fdl
        >>> loss_fn = lambda p, x, y: F.mse_loss(F.linear(x, p["w"]), y)
        >>> opt = fdl.optim.sgd(lr=0.1)
        >>> step = make_dp_train_step(loss_fn, opt, noise_multiplier=1.0, max_grad_norm=1.0,
        ...                           expected_batch_size=4)
        >>> p = {"w": torch.zeros(1, 2)}
        >>> p, s, loss = step(p, opt.init(p), fdl.random.key(0), torch.ones(4, 2), torch.ones(4, 1))
        >>> p["w"].shape
        torch.Size([1, 2])
    """
    _step.check_optimizer(optimizer, "make_dp_train_step")
    check_not_accumulating(optimizer, "make_dp_train_step")
    grad_fn = functools.partial(
        dp_grads,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        method=method,
        micro_batch_size=micro_batch_size,
    )
    step = _train.make_train_step(
        loss_fn, optimizer, has_aux=has_aux, compile=compile, grad_fn=grad_fn, donate=donate
    )
    return reject_accumulation(step, "make_dp_train_step")


def poisson_max_size(num_examples: int, sample_rate: float, *, tail: float = 1e-9) -> int:
    """A padded batch size that a Poisson batch exceeds with probability below ``tail``.

    Chernoff bound on ``Binomial(N, q)``: the smallest ``k >= N q`` with
    ``exp(-N · KL(k/N ‖ q)) <= tail``.

    Example:
        >>> poisson_max_size(60000, 256 / 60000)
        366
    """
    n, q = int(num_examples), check_rate(sample_rate)
    if n <= 0:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    if q == 1.0:
        return n
    mean = n * q
    for k in range(math.ceil(mean), n + 1):
        a = k / n
        kl = a * math.log(a / q) + (0.0 if a == 1.0 else (1 - a) * math.log((1 - a) / (1 - q)))
        if -n * kl <= math.log(tail):
            return k
    return n


def poisson_sample(
    key: _random.Key,
    num_examples: int,
    sample_rate: float,
    max_size: int | None = None,
    *,
    return_overflow: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Poisson-sample a batch as fixed-size ``(indices, mask)``.

    Each of ``num_examples`` examples is included independently with
    probability ``sample_rate``. The included indices come first (in random
    order), padded with excluded ones to ``max_size``; ``mask`` is ``True`` on
    the included rows.

    **Overflow.** If ``K > max_size`` examples are drawn, ``K - max_size`` of
    them (at random) do not fit and are dropped. This is never silent: with
    ``return_overflow=True`` the count ``max(0, K - max_size)`` is returned as a
    third value; otherwise a ``RuntimeWarning`` says how many were dropped
    (eagerly; nothing is checked while ``torch.compile`` traces). With the
    default ``max_size`` (:func:`poisson_max_size`) it happens with probability
    below 1e-9 per draw. A dropped draw is not the Poisson sample the
    accountant assumes; the remedy is a larger ``max_size`` (a smaller
    ``tail``), with ``micro_batch_size`` on the step if memory is the limit.

    Args:
        key: an ``fdl.random`` key.
        num_examples: dataset size ``N``.
        sample_rate: ``q`` in (0, 1].
        max_size: rows in the padded batch (default :func:`poisson_max_size`).
        return_overflow: also return the number of drawn examples dropped.

    Returns:
        ``indices`` (int64, ``(max_size,)``) and ``mask`` (bool, ``(max_size,)``);
        with ``return_overflow``, also ``overflow`` (an int64 scalar tensor).

    Example:
        >>> import fdl
        >>> idx, mask = poisson_sample(fdl.random.key(0), 1000, 0.05, max_size=100)
        >>> idx.shape, mask.shape, 20 < int(mask.sum()) < 80
        (torch.Size([100]), torch.Size([100]), True)
        >>> _, mask, dropped = poisson_sample(fdl.random.key(0), 1000, 0.05, max_size=10,
        ...                                   return_overflow=True)
        >>> int(mask.sum()), int(dropped) > 0
        (10, True)
    """
    q = check_rate(sample_rate)
    n = int(num_examples)
    if n <= 0:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    size = poisson_max_size(n, q) if max_size is None else int(max_size)
    if not 0 < size <= n:
        raise ValueError(f"max_size must be in [1, num_examples={n}], got {max_size}")
    k_in, k_order = _random.split(key)
    included = _random.uniform(k_in, (n,), dtype=torch.float64) < q
    order = _random.permutation(k_order, n)
    # included examples first, each group in random order
    ranked = order[torch.argsort((~included[order]).to(torch.int8), stable=True)]
    indices = ranked[:size]
    overflow = (included.sum() - size).clamp(min=0)
    if return_overflow:
        return indices, included[indices], overflow
    if _eager.validating() and bool(overflow > 0):
        warnings.warn(
            f"poisson_sample: {int(overflow)} of the {int(overflow) + size} examples drawn did "
            f"not fit in max_size={size} and were dropped, so this batch is not the Poisson "
            "sample the accountant assumes; use a larger max_size (poisson_max_size(N, q, "
            "tail=...)), with micro_batch_size= on the step if memory is the limit, or pass "
            "return_overflow=True to count drops",
            RuntimeWarning,
            stacklevel=2,
        )
    return indices, included[indices]
