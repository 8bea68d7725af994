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

from typing import Any

import torch

from fdl.nn import _lean_softmax as _sm

Tensor = torch.Tensor


def safe_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last axis; rows that are all ``-inf`` give zeros (and zero gradient)."""
    dead = torch.isneginf(scores).all(dim=-1, keepdim=True)
    probs = _sm.softmax(torch.where(dead, torch.zeros_like(scores), scores), -1)
    return torch.where(dead, torch.zeros_like(probs), probs)


def weights(query: Tensor, k: Tensor, bias: Tensor | None, s: float) -> Tensor:
    """The attention weights ``safe_softmax(s Q Kᵀ + B)``: ``(*, L, S)``."""
    scores = torch.matmul(query, k.transpose(-2, -1)) * s  # (*, L, S)
    if bias is not None:
        scores = scores + bias
    return safe_softmax(scores)


def _to(t: Tensor, like: Tensor) -> Tensor:
    """``t`` summed down to ``like``'s (broadcast) shape."""
    return t if t.shape == like.shape else t.sum_to_size(like.shape)


class _Attention(torch.autograd.Function):
    """``weights(Q, K, B, s) V`` saving only ``Q, K, V, B``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, s: float) -> Tensor:  # type: ignore[override]
        return torch.matmul(weights(q, k, bias, s), v)  # (*, L, E_v)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:  # type: ignore[override]
        q, k, v, bias, s = inputs
        ctx.s = s
        ctx.save_for_backward(q, k, v, bias)
        ctx.save_for_forward(q, k, v, bias)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple:  # type: ignore[override]
        q, k, v, bias = ctx.saved_tensors
        s = ctx.s
        p = weights(q, k, bias, s)  # (*, L, S), recomputed
        gv = torch.matmul(p.transpose(-2, -1), g)  # (*, S, E_v)
        gp = torch.matmul(g, v.transpose(-2, -1))  # (*, L, S)
        gs = p * (gp - torch.sum(p * gp, dim=-1, keepdim=True))
        gq = torch.matmul(gs, k) * s  # (*, L, E)
        gk = torch.matmul(gs.transpose(-2, -1), q) * s  # (*, S, E)
        gb = _to(gs, bias) if bias is not None and ctx.needs_input_grad[3] else None
        return _to(gq, q), _to(gk, k), _to(gv, v), gb, None

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
