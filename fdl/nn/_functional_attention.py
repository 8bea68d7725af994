r"""Scaled dot-product attention and attention masks, written out from the formula.

.. math::

    \operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\left(
        s\, Q K^\top + B\right) V,\qquad s = 1/\sqrt{E}\ \text{(or ``scale``)}

with the additive bias ``B`` built from the masks: ``0`` where a position takes
part and ``-inf`` where it is masked out (a float mask is added as it is).
``torch.nn.functional.scaled_dot_product_attention`` is never called; the
kernels are ``torch.matmul`` and elementwise math, and the softmax is fdl's.

Mask conventions (as torch):

* ``scaled_dot_product_attention(attn_mask=bool)``: ``True`` = **take part**.
* ``MultiheadAttention`` / ``Transformer*`` masks (``attn_mask``,
  ``key_padding_mask``, ``src_mask``, ...) when bool: ``True`` = **masked out**.

A row whose every position is masked out attends to nothing: here its output is
0 (torch's ``_safe_softmax``), while ``MultiheadAttention`` with
``need_weights=True`` gives NaN there, as torch does.
"""

from __future__ import annotations

import math

import torch

from fdl import random as _random
from fdl.nn import _functional_layers as _L
from fdl.nn import _lean_attention as _lean

__all__ = ["scaled_dot_product_attention"]

Tensor = torch.Tensor


def causal_mask(length: int, source: int, *, device: torch.device | None = None) -> Tensor:
    """Bool ``(L, S)`` mask, ``True`` where query ``i`` may see key ``j`` (``j <= i``)."""
    return torch.ones(length, source, dtype=torch.bool, device=device).tril()


def mask_to_bias(
    mask: Tensor | None, dtype: torch.dtype, *, true_means_masked: bool
) -> Tensor | None:
    """A bool or float mask as an additive float bias (``-inf`` where masked out)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        masked = mask if true_means_masked else mask.logical_not()
        zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return zeros.masked_fill(masked, float("-inf"))
    if not mask.is_floating_point():
        raise TypeError(f"attention masks must be bool or floating, got dtype {mask.dtype}")
    return mask.to(dtype)


def scaled_dot_product_attention(
    query: Tensor,
    key_tensor: Tensor,
    value: Tensor,
    /,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    key: _random.Key | None = None,
) -> Tensor:
    r"""Attention :math:`\operatorname{softmax}(s\,Q K^\top + B)\,V`, as torch's function.

    ``s = scale`` or ``1 / sqrt(E)``; ``B = 0`` where a key position takes part
    and ``-inf`` where it does not: a bool ``attn_mask`` keeps positions where it
    is ``True``; a float ``attn_mask`` is added; ``is_causal`` keeps ``j <= i``
    (the top-left lower triangle of the ``(L, S)`` scores). Dropout with
    probability ``dropout_p`` is applied to the attention weights, with the mask
    drawn from ``key``.

    Args:
        query: ``(*, L, E)``.
        key_tensor: the attention keys ``(*, S, E)`` (torch's ``key``; pass it
            positionally — the keyword ``key=`` is the RNG key).
        value: ``(*, S, E_v)``.
        attn_mask: bool or float, broadcastable to ``(*, L, S)``.
        dropout_p: dropout probability on the weights (needs ``key`` when ``> 0``).
        is_causal: causal mask; ``attn_mask`` must then be ``None``.
        scale: the score scale ``s`` (default ``1 / sqrt(E)``).
        enable_gqa: grouped-query attention: ``key``/``value`` heads (dim ``-3``)
            are repeated to the number of query heads.
        key: an ``fdl.random`` key for the dropout mask.

    Returns:
        ``(*, L, E_v)``.

    Note:
        torch draws the dropout mask from the global RNG and has no
        ``training`` flag; fdl draws it from ``key`` (``dropout_p=0`` is exact).
        Fully masked rows give 0, as torch's math backend.

    Example:
        >>> import torch
        >>> q = k = v = torch.eye(2).reshape(1, 2, 2)
        >>> scaled_dot_product_attention(q, k, v, is_causal=True)[0, 0]
        tensor([1., 0.])
    """
    if is_causal and attn_mask is not None:
        raise ValueError(
            "scaled_dot_product_attention: pass either attn_mask or is_causal=True, not both"
        )
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    if dropout_p > 0 and key is None:
        raise ValueError(
            "scaled_dot_product_attention: dropout_p > 0 needs key=... (an fdl.random key)"
        )
    k, v = key_tensor, value
    if enable_gqa:
        rep = query.shape[-3] // k.shape[-3]
        k = k.repeat_interleave(rep, dim=-3)  # (*, H_kv, S, E) -> (*, H, S, E)
        v = v.repeat_interleave(rep, dim=-3)
    length, source = query.shape[-2], k.shape[-2]
    s = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if is_causal:
        attn_mask = causal_mask(length, source, device=query.device)
    bias = mask_to_bias(attn_mask, query.dtype, true_means_masked=False)
    if dropout_p == 0:
        return _lean.attention(query, k, v, bias, s)  # (*, L, E_v)
    weights = _L.dropout(_lean.weights(query, k, bias, s), dropout_p, True, key=key)
    return torch.matmul(weights, v)  # (*, L, E_v)
