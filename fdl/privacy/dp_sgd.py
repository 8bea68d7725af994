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
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from fdl import _step
from fdl import random as _random
from fdl import train as _train
from fdl import tree as _tree
from fdl._compile import CompileArg
from fdl._dp_checks import check_clip, check_dp_args, check_noise, check_rate
from fdl._per_sample import core as _core

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


def add_noise(grads: Any, key: _random.Key, noise_multiplier: float, max_grad_norm: float) -> Any:
    """``grads + σ·C·z`` with ``z ~ N(0, I)`` drawn from ``key``.

    One ``fdl.random.normal(key, (total size,))`` draw is split over the
    leaves in their flattening order (float64 if any leaf is float64).

    Args:
        grads: a pytree of summed clipped gradients.
        key: an ``fdl.random`` key.
        noise_multiplier: ``σ >= 0``.
        max_grad_norm: ``C > 0``.

    Returns:
        The noised pytree.

    Example:
        >>> import fdl
        >>> g = add_noise({"w": torch.zeros(10000)}, fdl.random.key(0), 2.0, 0.5)
        >>> round(float(g["w"].std()), 1)
        1.0
    """
    std = check_noise(noise_multiplier) * check_clip(max_grad_norm)
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
    max_grad_norm: float,
    expected_batch_size: float,
    has_aux: bool = False,
    method: str = "auto",
) -> Callable[..., Any]:
    """Build ``fn(params, key, *batch, mask=None) -> (private_grads, loss[, aux])``.

    ``private_grads = (Σ_i f_i · grad_i + σ·C·z) / B_e`` with
    ``f_i = m_i · min(1, C / (‖grad_i‖ + 1e-6))``, ``grad_i`` the gradient of
    ``loss_fn`` on example ``i`` alone (see :func:`fdl.per_sample_grads`),
    ``m_i`` the mask (all ones when ``None``) and ``z ~ N(0, I)`` from ``key``.

    Args:
        loss_fn: the ordinary batched loss ``loss_fn(params, *batch)``.
        noise_multiplier: ``σ >= 0``.
        max_grad_norm: ``C > 0``.
        expected_batch_size: ``B_e > 0``, the divisor (``q · N`` for Poisson batches).
        has_aux: ``loss_fn`` returns ``(loss, aux)``.
        method: ``"auto"``, ``"rules"`` or ``"vmap"`` (see :mod:`fdl.per_sample`).

    Returns:
        The function. ``loss`` (and ``aux``) are ``loss_fn`` on the whole batch
        given, masked rows included: use them for monitoring only.

    Example:
        >>> import torch, torch.nn.functional as F, fdl
        >>> loss_fn = lambda p, x, y: F.mse_loss(F.linear(x, p["w"]), y)
        >>> fn = dp_grads(loss_fn, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=4)
        >>> p = {"w": torch.ones(1, 2)}
        >>> g, loss = fn(p, fdl.random.key(0), torch.ones(4, 2), torch.zeros(4, 1))
        >>> g["w"]  # each example's gradient (4, 4) is clipped to norm 1
        tensor([[0.7071, 0.7071]])
    """
    sigma, clip, b_e = check_dp_args(noise_multiplier, max_grad_norm, expected_batch_size, method)

    def fn(params: Any, key: _random.Key, *batch: Any, mask: torch.Tensor | None = None) -> Any:
        loss, aux, rep, _ = _core.decompose(
            loss_fn, params, batch, has_aux=has_aux, chunk_size=None, method=method, need_loss=True
        )
        norms = rep.sq_norms().sqrt()
        f = torch.clamp(clip / (norms + CLIP_EPS), max=1.0)
        if mask is not None:
            if mask.shape != norms.shape:
                raise ValueError(
                    f"mask must have shape {tuple(norms.shape)} (one entry per example), "
                    f"got {tuple(mask.shape)}"
                )
            f = f * mask.to(f.dtype)
        summed = _tree.unflatten(_tree.structure(params), rep.weighted_sum(f))
        noised = add_noise(summed, key, sigma, clip)
        grads = _tree.map(lambda t: t / b_e, noised)
        return (grads, loss, aux) if has_aux else (grads, loss)

    return fn


def make_dp_train_step(
    loss_fn: Callable[..., Any],
    optimizer: Any,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    has_aux: bool = False,
    method: str = "auto",
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
            as for :func:`dp_grads`.
        compile: ``True`` wraps the step in ``torch.compile(fullgraph=True)``
            (per-example gradients then take the ``vmap`` path); a dict gives
            ``torch.compile`` options. ``False`` (default) runs eagerly, where
            the rules path applies — on a CPU usually the faster choice.
        donate: write the results into the buffers of the params and state
            passed in (see :func:`fdl.train.make_train_step`).

    Returns:
        The step function (pure); with ``has_aux`` it returns ``aux`` as a
        fourth value. Pass a fresh key every step (e.g.
        ``fdl.random.fold_in(key, step)``) and the Poisson mask.

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
    grad_fn = functools.partial(
        dp_grads,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        method=method,
    )
    return _train.make_train_step(
        loss_fn, optimizer, has_aux=has_aux, compile=compile, grad_fn=grad_fn, donate=donate
    )


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
    key: _random.Key, num_examples: int, sample_rate: float, max_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Poisson-sample a batch as fixed-size ``(indices, mask)``.

    Each of ``num_examples`` examples is included independently with
    probability ``sample_rate``. The included indices come first (in random
    order), padded with excluded ones to ``max_size``; ``mask`` is ``True`` on
    the included rows. If more than ``max_size`` are drawn, the extra ones are
    dropped (probability below 1e-9 with the default ``max_size`` from
    :func:`poisson_max_size`).

    Args:
        key: an ``fdl.random`` key.
        num_examples: dataset size ``N``.
        sample_rate: ``q`` in (0, 1].
        max_size: rows in the padded batch (default :func:`poisson_max_size`).

    Returns:
        ``indices`` (int64, ``(max_size,)``) and ``mask`` (bool, ``(max_size,)``).

    Example:
        >>> import fdl
        >>> idx, mask = poisson_sample(fdl.random.key(0), 1000, 0.05, max_size=100)
        >>> idx.shape, mask.shape, 20 < int(mask.sum()) < 80
        (torch.Size([100]), torch.Size([100]), True)
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
    return indices, included[indices]
