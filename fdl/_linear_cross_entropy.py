"""``linear_cross_entropy``: a linear projection to logits, then fdl's cross-entropy.

Shared by :mod:`fdl.losses` (the function) and :mod:`fdl.nn` (the
``LinearCrossEntropyLoss`` layer). The loss is fdl's own
:func:`fdl.losses.cross_entropy` of ``logits = input @ W^T + b``; with ``chunk_size``
the batch is processed in chunks by a custom autograd function that keeps no logits and
recomputes each chunk's in the backward pass, so only one chunk's logits exist at a time.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fdl import _loss_common as _c
from fdl.nn.functional import linear

__all__ = ["linear_cross_entropy"]

Tensor = torch.Tensor


def _cross_entropy():
    # fdl.losses imports this module at its end; a top-level import would be circular
    from fdl.losses import cross_entropy

    return cross_entropy


def _check_shapes(
    name: str, input: Tensor, linear_weight: Tensor, linear_bias: Tensor | None
) -> tuple[int, tuple[int, ...]]:
    """torch's shape checks; returns ``(C, out_features)``."""
    if input.dim() not in (1, 2):
        raise ValueError(
            f"{name}: input must have shape (in_features,) or (N, in_features), "
            f"got {tuple(input.shape)}"
        )
    if linear_weight.dim() < 2:
        raise ValueError(
            f"{name}: linear_weight must have shape (C, *out_features, in_features), got "
            f"{tuple(linear_weight.shape)}"
        )
    if input.shape[-1] != linear_weight.shape[-1]:
        raise ValueError(
            f"{name}: input and linear_weight must share their last dimension (in_features), "
            f"got {input.shape[-1]} and {linear_weight.shape[-1]}"
        )
    c, out_features = linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != (c, *out_features):
        raise ValueError(
            f"{name}: linear_bias must have shape {(c, *out_features)}, got "
            f"{tuple(linear_bias.shape)}"
        )
    if out_features and input.dim() == 1:
        raise ValueError(
            f"{name}: a K-dimensional loss (linear_weight {tuple(linear_weight.shape)}) needs "
            f"batched input (N, {input.shape[-1]}), got {tuple(input.shape)}"
        )
    return c, out_features


def _logits(input: Tensor, w2: Tensor, b2: Tensor | None, shape: tuple[int, ...]) -> Tensor:
    return linear(input, w2, b2).reshape(shape)  # (*N, C * prod(d)) -> (*N, C, *d)


def _example_weights(target: Tensor, weight: Tensor | None, ignore_index: int, dtype) -> Tensor:
    """``w[t_i]`` over non-ignored ``i`` (0 where ignored): the ``'mean'`` denominator terms."""
    valid = target != ignore_index
    if weight is None:
        return valid.to(dtype)
    safe = torch.where(valid, target, torch.zeros_like(target))
    return torch.where(valid, weight[safe], weight.new_zeros(()))


def _chunk_losses(
    x: Tensor,
    w2: Tensor,
    b2: Tensor | None,
    t: Tensor,
    weight: Tensor | None,
    spec: tuple,
    reduction: str = "none",
) -> Tensor:
    """fdl's cross-entropy of the logits of rows ``x``."""
    c, out_features, ii, eps = spec
    logits = _logits(x, w2, b2, (*x.shape[:-1], c, *out_features))
    return _cross_entropy()(
        logits, t, weight=weight, ignore_index=ii, reduction=reduction, label_smoothing=eps
    )


class _ChunkedLosses(torch.autograd.Function):
    """Per-example losses ``(N, *d)`` taken ``chunk`` rows at a time.

    The forward keeps no logits; the backward recomputes each chunk's logits and
    takes their vector-Jacobian product with ``torch.func.vjp``, so at most one
    chunk's logits exist at any time. Differentiable in ``x``, ``w2``, ``b2`` only.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w2, b2, t, weight, spec, chunk):  # noqa: D102
        with torch.no_grad():
            parts = [
                _chunk_losses(x[i : i + chunk], w2, b2, t[i : i + chunk], weight, spec)
                for i in range(0, x.shape[0], chunk)
            ]
        return torch.cat(parts)  # (N, *d)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:  # noqa: D102
        x, w2, b2, t, weight, spec, chunk = inputs
        ctx.save_for_backward(x, w2, b2, t, weight)
        ctx.spec, ctx.chunk = spec, chunk

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:  # noqa: D102
        x, w2, b2, t, weight = ctx.saved_tensors
        spec, chunk = ctx.spec, ctx.chunk
        gxs, gw, gb = [], torch.zeros_like(w2), None if b2 is None else torch.zeros_like(b2)
        for i in range(0, x.shape[0], chunk):
            xc, tc = x[i : i + chunk], t[i : i + chunk]
            if b2 is None:
                _, vjp = torch.func.vjp(
                    lambda xc, w2, tc=tc: _chunk_losses(xc, w2, None, tc, weight, spec), xc, w2
                )
                gx, gwc = vjp(grad[i : i + chunk])
            else:
                _, vjp = torch.func.vjp(
                    lambda xc, w2, b2, tc=tc: _chunk_losses(xc, w2, b2, tc, weight, spec),
                    xc,
                    w2,
                    b2,
                )
                gx, gwc, gbc = vjp(grad[i : i + chunk])
                gb = gb + gbc
            gxs.append(gx)
            gw = gw + gwc
        return torch.cat(gxs), gw, gb, None, None, None, None


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
) -> Tensor:
    """Cross-entropy of the logits ``input @ linear_weight^T + linear_bias``, as torch's.

    With ``W2 = linear_weight.reshape(C * prod(d), in_features)`` and ``b2`` the
    bias flattened likewise: ``logits = (input @ W2^T + b2).reshape(*N, C, *d)``
    (``d = linear_weight.shape[1:-1]``, empty for the usual ``(C, in_features)``
    weight), and the loss is
    ``fdl.losses.cross_entropy(logits, target, weight, ignore_index, reduction,
    label_smoothing)``. ``ignore_index=None`` means ``-100`` for class-index targets,
    as in torch; a target of the logits' shape holds class probabilities (then
    ``ignore_index`` must be ``None``).

    With ``chunk_size``, rows ``input[i:i + chunk_size]`` are processed one chunk at a
    time: a chunk's logits are freed after its per-example losses are taken and
    recomputed in the backward pass (a ``torch.func.vjp`` per chunk), so peak memory
    holds one ``(chunk_size, C, *d)`` block instead of ``(N, C, *d)``. ``'sum'`` adds
    the chunks' sums, ``'mean'`` divides that by ``sum_i w[t_i]`` over non-ignored
    ``i`` (class indices) or by the number of examples (probabilities), ``'none'``
    concatenates. The value is the same formula, summed in another order.

    Args:
        input: ``(N, in_features)`` or ``(in_features,)``.
        linear_weight: ``(C, in_features)`` or ``(C, d1, ..., dK, in_features)``
            (the latter needs batched input).
        target: class indices ``(N,)``/``(N, d1, ...)``/``()``, or probabilities of
            the logits' shape ``(N, C, d1, ...)``/``(C,)``.
        linear_bias: optional ``(C, d1, ..., dK)``.
        weight: optional per-class weights ``(C,)``.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        ignore_index: class-index target value that contributes nothing
            (``None``: ``-100``).
        label_smoothing: in ``[0, 1]``.
        chunk_size: rows per chunk (``None``: the whole batch at once).

    Returns:
        The reduced loss, or per-example losses (``target``'s shape for class
        indices) for ``'none'``.

    Note:
        torch's ``options=LinearCrossEntropyOptions(...)`` selects its fused chunked
        kernel; fdl takes ``chunk_size`` instead, which works with every reduction,
        ``label_smoothing``, K-dimensional weights, higher-order gradients,
        ``torch.func.grad``/``vmap`` and ``torch.compile``. Chunked, it differentiates
        ``input``, ``linear_weight`` and ``linear_bias`` only (a ``target`` or ``weight``
        that requires grad raises ``ValueError``), as torch's chunked path.
        torch raises ``RuntimeError`` on bad shapes; fdl raises ``ValueError``.

    Example:
        >>> import torch
        >>> x, w = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.eye(2) * 100
        >>> linear_cross_entropy(x, w, torch.tensor([0, 1]), reduction="none")
        tensor([0., 0.])
        >>> linear_cross_entropy(x, w, torch.tensor([0, 1]), chunk_size=1)
        tensor(0.)
    """
    name = "linear_cross_entropy"
    _c.check_tensors(
        name,
        input=input,
        linear_weight=linear_weight,
        target=target,
        linear_bias=linear_bias,
        weight=weight,
    )
    reduction = _c.reduction_of(name, reduction)
    c, out_features = _check_shapes(name, input, linear_weight, linear_bias)
    logits_shape = (*input.shape[:-1], c, *out_features)
    probabilities = tuple(target.shape) == logits_shape
    if probabilities and ignore_index is not None:
        raise ValueError(f"{name}: ignore_index must be None for a probability target")
    ii = -100 if ignore_index is None else ignore_index
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"{name}: chunk_size must be a positive int or None, got {chunk_size!r}")

    flat = math.prod(out_features, start=c)
    w2 = linear_weight.reshape(flat, input.shape[-1])  # (C, *d, in) -> (C * prod(d), in)
    b2 = None if linear_bias is None else linear_bias.reshape(flat)  # (C * prod(d),)
    spec = (c, out_features, ii, label_smoothing)
    n = input.shape[0] if input.dim() == 2 else 0
    if chunk_size is None or input.dim() == 1 or chunk_size >= n:
        return _chunk_losses(input, w2, b2, target, weight, spec, reduction)
    for arg, value in (("target", target), ("weight", weight)):
        if value is not None and value.requires_grad:
            raise ValueError(f"{name}: chunk_size gives no gradient for {arg}; detach it")

    losses = _ChunkedLosses.apply(input, w2, b2, target, weight, spec, chunk_size)  # (N, *d)
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    if probabilities:
        return total / (target.numel() // c)
    return total / _example_weights(target, weight, ii, input.dtype).sum()
