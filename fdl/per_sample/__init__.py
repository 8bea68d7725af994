"""Per-sample (per-example) gradients and their norms.

``per_sample_grads(loss_fn)(params, x, y)`` returns, for every leaf of
``params``, a tensor with a leading batch axis whose ``i``-th entry is the
gradient of ``loss_fn`` evaluated on example ``i`` alone, as a batch of one::

    grads[...][i] == torch.func.grad(loss_fn)(params, x[i:i+1], y[i:i+1])[...]

``loss_fn`` is the ordinary batched loss (any reduction over the batch: the
per-example gradient is defined on the batch of one, so a mean and a sum
reduction give the same per-sample gradients).

Two methods compute the same numbers:

* ``"vmap"``: ``torch.func.vmap`` over examples of ``torch.func.grad`` on a
  batch of one. Works for any ``loss_fn``; ``chunk_size`` bounds how many
  examples are processed at once.
* ``"rules"``: one ordinary batched forward and backward. Calls of
  ``torch.nn.functional.linear``, ``conv1d``, ``conv2d`` and ``embedding``
  whose weight is a parameter or a view of one (fdl's ``Linear``, ``Conv*``,
  ``Embedding``, the projections of ``MultiheadAttention`` and the
  ``Transformer*`` layers), and elementwise products and sums that broadcast a
  parameter over the batch (the affine maps of ``LayerNorm`` and
  ``GroupNorm``), are recorded; each example's gradient is formed from the
  layer input and the output gradient (``grad_W[i] = Σ_t g[i,t]ᵀ a[i,t]``,
  conv through im2col, an embedding by scatter-add), norms use the
  Gram-matrix form where cheaper (ghost norms), and the batch-mean scaling is
  undone by comparing example 0's output gradient in the batch with its output
  gradient as a batch of one (this also catches losses that are not a sum or
  mean of per-example terms, and models that couple examples, e.g. BatchNorm
  in training mode).

``method="auto"`` (the default) uses the rules where every parameter is used
only by such calls and falls back to ``vmap`` otherwise (a parameter used by
any other op, a recurrent layer (``RNN``/``LSTM``/``GRU`` mark themselves
``vmap``-only), a sequence-first layout, a non-linear reduction, coupled
examples, random ops, or inside a ``torch.func`` transform).
:func:`per_sample_method` reports which path a call takes and the rule behind
each parameter.

Under ``torch.compile(fullgraph=True)``, ``"auto"`` takes ``vmap`` (quick to
compile) and ``method="rules"`` traces the rules (about twice as fast per step,
several times slower to compile): the static reasons above then raise while
tracing, and the data-dependent check (the reduction, coupled examples) runs in
the graph and raises ``RuntimeError`` when the compiled function runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fdl import tree as _tree
from fdl._per_sample import core as _core

__all__ = ["PerSampleMethod", "per_sample_grad_norms", "per_sample_grads", "per_sample_method"]

_METHODS = ("auto", "rules", "vmap")


def _options(chunk_size: int | None, has_aux: bool, method: str) -> dict[str, Any]:
    """The checked options every per-sample function passes to the core."""
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    return {"chunk_size": chunk_size, "has_aux": has_aux, "method": method}


def per_sample_grads(
    loss_fn: Callable[..., Any],
    *,
    chunk_size: int | None = None,
    has_aux: bool = False,
    method: str = "auto",
) -> Callable[..., Any]:
    """Turn a batched loss into a function returning per-example gradients.

    ``grads[path][i] = ∂ loss_fn(params, x[i:i+1], y[i:i+1]) / ∂ params[path]``.

    Args:
        loss_fn: ``loss_fn(params, *batch) -> scalar`` (or ``(scalar, aux)`` with
            ``has_aux``), the ordinary batched loss; every ``batch`` argument is a
            tensor (or pytree of tensors) with a leading batch axis.
        chunk_size: process at most this many examples at once (bounds the
            intermediate memory); ``None``: the whole batch.
        has_aux: ``loss_fn`` returns ``(loss, aux)``; the result is then
            ``(grads, aux)`` with ``aux`` from ``loss_fn`` on the whole batch.
        method: ``"auto"``, ``"rules"`` (raise ``ValueError`` where they do not
            apply) or ``"vmap"``; see the module docstring.

    Returns:
        ``fn(params, *batch) -> grads`` (or ``(grads, aux)``), ``grads`` shaped
        like ``params`` with a leading batch axis on every leaf.

    Raises:
        ValueError: ``chunk_size <= 0``, an unknown ``method``, batch arguments
            of different lengths, a non-scalar loss.

    Example:
        >>> import torch, torch.nn.functional as F, fdl
        >>> def loss_fn(params, x, y):
        ...     return F.mse_loss(F.linear(x, params["weight"], params["bias"]), y)
        >>> params = {"weight": torch.randn(2, 3), "bias": torch.zeros(2)}
        >>> x, y = torch.randn(5, 3), torch.randn(5, 2)
        >>> grads = fdl.per_sample_grads(loss_fn)(params, x, y)
        >>> grads["weight"].shape
        torch.Size([5, 2, 3])
        >>> g0 = torch.func.grad(loss_fn)(params, x[:1], y[:1])
        >>> torch.allclose(grads["weight"][0], g0["weight"], atol=1e-6)
        True

    Note:
        Opacus's ``grad_sample`` equals this when its ``loss_reduction`` matches
        the loss (it multiplies the output gradients by ``B`` for ``"mean"``);
        here the reduction is found from ``loss_fn`` itself, with no flag.
    """
    opts = _options(chunk_size, has_aux, method)

    def fn(params: Any, *batch: Any) -> Any:
        _, aux, rep, _ = _core.decompose(loss_fn, params, batch, **opts, need_loss=False)
        grads = _tree.unflatten(_tree.structure(params), rep.materialize())
        return (grads, aux) if has_aux else grads

    return fn


def per_sample_grad_norms(
    loss_fn: Callable[..., Any],
    *,
    chunk_size: int | None = None,
    has_aux: bool = False,
    method: str = "auto",
) -> Callable[..., Any]:
    """Each example's global L2 gradient norm over the whole params pytree.

    ``norms[i] = sqrt(Σ_leaves ‖grad_i[leaf]‖²)`` with ``grad_i`` as in
    :func:`per_sample_grads`. The rules path never forms per-example gradients
    of linear layers without sequence axes (``‖g aᵀ‖ = ‖g‖‖a‖``) and uses Gram
    matrices (ghost norms) where cheaper; the ``vmap`` path holds at most
    ``chunk_size`` (default 32) per-example gradients at a time.

    Args:
        loss_fn: the batched loss, as for :func:`per_sample_grads`.
        chunk_size: examples per chunk (``None``: whole batch on the rules
            path, 32 on the ``vmap`` path).
        has_aux: ``loss_fn`` returns ``(loss, aux)``; the result is ``(norms, aux)``.
        method: ``"auto"``, ``"rules"`` or ``"vmap"``.

    Returns:
        ``fn(params, *batch) -> norms`` of shape ``(B,)`` (or ``(norms, aux)``).

    Example:
        >>> import torch, torch.nn.functional as F, fdl
        >>> def loss_fn(params, x, y):
        ...     return F.mse_loss(F.linear(x, params["weight"]), y, reduction="sum")
        >>> params = {"weight": torch.randn(2, 3)}
        >>> x, y = torch.randn(4, 3), torch.randn(4, 2)
        >>> norms = fdl.per_sample_grad_norms(loss_fn)(params, x, y)
        >>> g = fdl.per_sample_grads(loss_fn)(params, x, y)["weight"]
        >>> torch.allclose(norms, g.flatten(1).norm(dim=1), atol=1e-5)
        True
    """
    opts = _options(chunk_size, has_aux, method)

    def fn(params: Any, *batch: Any) -> Any:
        # on the vmap path, hold only chunk_size per-example gradients at a time (below)
        _, aux, rep, _ = _core.decompose(
            loss_fn, params, batch, **opts, need_loss=False, vmap_rep=False
        )
        if rep is not None:
            sq = rep.sq_norms()
        else:
            sq = _core.vmap_sq_norms(loss_fn, params, batch, has_aux, chunk_size or 32)
        norms = sq.sqrt()
        return (norms, aux) if has_aux else norms

    return fn


class PerSampleMethod(NamedTuple):
    """Which path :func:`per_sample_grads` takes for a loss and a batch, and why.

    Attributes:
        method: ``"rules"`` or ``"vmap"``.
        reason: why the rules do not apply (``None`` on the rules path).
        rules: on the rules path, ``{param path: rule kinds}`` for every
            parameter leaf, e.g. ``{"fc.weight": ("linear",)}``; the kinds are
            ``"linear"``, ``"conv"``, ``"embedding"``, ``"scale"`` and
            ``"shift"`` (a broadcast elementwise product or sum, as in a norm's
            affine map), and ``()`` for a leaf the loss does not use. Empty on
            the ``vmap`` path.
    """

    method: str
    reason: str | None
    rules: dict[str, tuple[str, ...]]


def per_sample_method(
    loss_fn: Callable[..., Any],
    *,
    chunk_size: int | None = None,
    has_aux: bool = False,
    method: str = "auto",
) -> Callable[..., PerSampleMethod]:
    """Report the path :func:`per_sample_grads` (same arguments) takes, and each leaf's rule.

    Runs the same decomposition as :func:`per_sample_grads` (one batched
    forward and backward on the rules path, plus a batch of one for the
    reduction check) without materialising per-example gradients.

    Args:
        loss_fn, chunk_size, has_aux, method: as for :func:`per_sample_grads`.

    Returns:
        ``fn(params, *batch) -> PerSampleMethod``.

    Example:
        >>> import torch, torch.nn.functional as F, fdl
        >>> def loss_fn(params, x, y):
        ...     return F.mse_loss(F.linear(x, params["weight"]), y)
        >>> params = {"weight": torch.randn(2, 3)}
        >>> x, y = torch.randn(4, 3), torch.randn(4, 2)
        >>> plan = fdl.per_sample.per_sample_method(loss_fn)(params, x, y)
        >>> plan.method, plan.rules
        ('rules', {'weight': ('linear',)})
    """
    opts = _options(chunk_size, has_aux, method)

    def fn(params: Any, *batch: Any) -> PerSampleMethod:
        if opts["method"] == "vmap":
            return PerSampleMethod("vmap", "method='vmap' was asked for", {})
        out = _core.try_rules(
            loss_fn, params, batch, has_aux=has_aux, chunk_size=chunk_size, need_loss=False
        )
        if isinstance(out, str):
            return PerSampleMethod("vmap", out, {})
        rep = out[2]
        parts = rep.parts if isinstance(rep, _core.Chunked) else [rep]
        kinds = [set(k) for k in parts[0].rule_kinds()]
        for part in parts[1:]:
            for s, k in zip(kinds, part.rule_kinds(), strict=True):
                s.update(k)
        paths = _tree.paths(params)
        return PerSampleMethod(
            "rules", None, {p: tuple(sorted(k)) for p, k in zip(paths, kinds, strict=True)}
        )

    return fn
