r"""The attention core ``softmax(s Q Kᵀ + B) V`` with a recomputing backward.

Written as plain tensor ops, eager autograd keeps the ``(*, L, S)`` scores'
exponential, the weights and the row sums for every attention call: at
``B = 1024`` sequences of 64 tokens and 4 heads each such tensor is 67 MB,
against 17 MB for ``Q``, ``K`` and ``V`` together. :func:`attention` is a
:class:`torch.autograd.Function` that saves only its inputs ``Q, K, V`` (views
of the projection's output) and the additive bias ``B``, and recomputes the
weights ``P = safe_softmax(s Q Kᵀ + B)`` in the backward (as flash attention
does):

.. math::

    \partial V = P^\top g,\quad \partial P = g V^\top,\quad
    \partial S = P \odot (\partial P - \textstyle\sum_S P \odot \partial P),\quad
    \partial Q = s\, \partial S\, K,\quad \partial K = s\, \partial S^\top Q,\quad
    \partial B = \partial S

(each reduced to its input's broadcast shape). Rows whose every key is
masked out (``-inf``) give zero weights and zero gradient, as
:func:`safe_softmax`. The backward is written in differentiable torch ops on
the saved inputs (double backward works); ``jvp`` gives forward mode
(``t_S = s (t_Q Kᵀ + Q t_Kᵀ) + t_B``, ``t_out = P ⊙ (t_S − Σ P ⊙ t_S) V + P t_V``)
and ``generate_vmap_rule`` batches it under ``torch.func.vmap``. Under
``torch.compile`` the plain formula :func:`weights` is used.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fdl.nn import _lean_softmax as _sm

Tensor = torch.Tensor
# score elements per part of the forward and backward: (B, H, L, S) is never whole
_CHUNK = 1 << 20


def safe_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last axis; rows that are all ``-inf`` give zeros (and zero gradient)."""
    return _sm.softmax(scores, -1, safe=True)


def weights(query: Tensor, k: Tensor, bias: Tensor | None, s: float) -> Tensor:
    """The attention weights ``safe_softmax(s Q Kᵀ + B)``: ``(*, L, S)``."""
    scores = torch.matmul(query * s, k.transpose(-2, -1))  # (*, L, S)
    if bias is not None:
        scores = scores + bias
    return safe_softmax(scores)


def _to(t: Tensor, like: Tensor) -> Tensor:
    """``t`` summed down to ``like``'s (broadcast) shape."""
    return t if t.shape == like.shape else t.sum_to_size(like.shape)


def _split(*ts: Tensor | None) -> list[tuple[Tensor | None, ...]]:
    """``ts`` cut along their common leading axis so each part has about ``_CHUNK`` scores.

    Only tensors with the query's rank and the full leading size are cut; the others
    (broadcast along that axis) go whole into every part. One part when nothing is cut.
    """
    q, k = ts[0], ts[1]
    assert q is not None and k is not None
    rank = q.dim()
    full = [t for t in ts if t is not None and t.dim() == rank]
    rows = max(t.shape[0] for t in full)
    scores = (
        math.prod(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])) * q.shape[-2] * k.shape[-2]
    )
    step = max(1, _CHUNK * rows // max(scores, 1))
    if rank < 3 or step >= rows or any(t is not None and t.dim() > rank for t in ts):
        return [ts]
    cut = [t is not None and t.dim() == rank and t.shape[0] == rows for t in ts]
    return [
        tuple(t[i : i + step] if c else t for t, c in zip(ts, cut, strict=True))
        for i in range(0, rows, step)
    ]


def _join(parts: list[tuple[Tensor | None, ...]], likes: tuple[Tensor | None, ...]) -> tuple:
    """Per-part results back together: concatenated where cut, summed where whole.

    ``likes[i]`` is the tensor result ``i`` is shaped like (``None``: always cut, the output).
    """
    if len(parts) == 1:
        return parts[0]
    out: list[Tensor | None] = []
    for i, like in enumerate(likes):
        pieces = [p[i] for p in parts]
        if pieces[0] is None:
            out.append(None)
        elif like is not None and pieces[0].shape == like.shape:  # broadcast: every part adds
            out.append(torch.stack(pieces).sum(0))  # type: ignore[arg-type]
        else:
            out.append(torch.cat(pieces, 0))  # type: ignore[arg-type]
    return tuple(out)


def _backward(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, g: Tensor, s: float, need_bias: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The gradients of ``weights(Q, K, B, s) V`` w.r.t. ``Q, K, V, B`` for cotangent ``g``."""
    p = weights(q, k, bias, s)  # (*, L, S), recomputed
    gv = torch.matmul(p.transpose(-2, -1), g)  # (*, S, E_v)
    gp = torch.matmul(g, v.transpose(-2, -1))  # (*, L, S)
    gs = p * (gp - torch.sum(p * gp, dim=-1, keepdim=True))
    gq = torch.matmul(gs, k) * s  # (*, L, E)
    gk = torch.matmul(gs.transpose(-2, -1), q) * s  # (*, S, E)
    gb = _to(gs, bias) if bias is not None and need_bias else None
    return _to(gq, q), _to(gk, k), _to(gv, v), gb


class _Attention(torch.autograd.Function):
    """``weights(Q, K, B, s) V`` saving only ``Q, K, V, B``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, s: float) -> Tensor:  # type: ignore[override]
        parts = _split(q, k, v, bias)
        return _join([(torch.matmul(weights(q, k, b, s), v),) for q, k, v, b in parts], (None,))[0]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:  # type: ignore[override]
        q, k, v, bias, s = inputs
        ctx.s = s
        ctx.save_for_backward(q, k, v, bias)
        ctx.save_for_forward(q, k, v, bias)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:  # type: ignore[override]
        q, k, v, bias = ctx.saved_tensors
        need_bias = bias is not None and ctx.needs_input_grad[3]
        parts = _split(q, k, v, bias, g)
        grads = [_backward(*part, ctx.s, need_bias) for part in parts]
        return (*_join(grads, (q, k, v, bias if need_bias else None)), None)

    @staticmethod
    def jvp(ctx: Any, tq: Any, tk: Any, tv: Any, tb: Any, _ts: Any) -> Tensor:  # type: ignore[override]
        q, k, v, bias = ctx.saved_tensors
        s = ctx.s
        p = weights(q, k, bias, s)
        ts = torch.zeros_like(p)
        if tq is not None:
            ts = ts + torch.matmul(tq, k.transpose(-2, -1)) * s
        if tk is not None:
            ts = ts + torch.matmul(q, tk.transpose(-2, -1)) * s
        if tb is not None:
            ts = ts + tb
        tp = p * (ts - torch.sum(p * ts, dim=-1, keepdim=True))
        out = torch.matmul(tp, v)
        return out if tv is None else out + torch.matmul(p, tv)


def attention(query: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, s: float) -> Tensor:
    """``softmax(s Q Kᵀ + B) V``: the lean autograd function eagerly, the formula compiled."""
    if _sm.eager():
        return _Attention.apply(query, k, v, bias, s)
    return torch.matmul(weights(query, k, bias, s), v)  # (*, L, E_v)
