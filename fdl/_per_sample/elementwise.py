r"""The per-sample rules of a parameter broadcast into an elementwise product or sum.

Normalisation layers end in ``out = a * w + b`` with ``w`` and ``b`` (views
of) parameters broadcast over the batch and the other axes of ``a``
(LayerNorm: ``a`` the normalised input ``(B, *, C)``, ``w: (C,)``; GroupNorm:
``a: (B, C, *)``, ``w`` viewed as ``(1, C, 1, ...)``). With ``δ = ∂ℓ_i/∂out``
and ``R`` the axes over which the parameter view is broadcast (every axis
where its size is 1, the batch axis excepted):

* scale ``out = a * w``: ``grad_w[i] = Σ_R δ[i] ⊙ a[i]``;
* shift ``out = a + b``: ``grad_b[i] = Σ_R δ[i]``.

The per-example gradients have the parameter's size (``C`` numbers), so the
norms are taken from them directly (``‖grad_w[i]‖²``, no Gram form is needed)
and a weighted sum over examples is ``Σ_i w[i] grad_w[i]``.
"""

from __future__ import annotations

import torch


def broadcast_axes(view_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The non-batch axes of ``out`` a parameter view of ``view_shape`` is broadcast over."""
    lead = len(out_shape) - len(view_shape)
    full = (1,) * lead + tuple(view_shape)  # right-aligned, as broadcasting does
    return tuple(d for d in range(1, len(out_shape)) if full[d] == 1)


def per_sample(
    kind: str, a: torch.Tensor, g: torch.Tensor, view_shape: tuple[int, ...]
) -> torch.Tensor:
    """``(B, *view_shape)`` per-example gradients of the broadcast parameter view."""
    prod = g * a if kind == "scale" else g  # (B, *out)
    axes = broadcast_axes(view_shape, tuple(g.shape))
    summed = prod.sum(axes, keepdim=True) if axes else prod  # (B, 1.., C.., 1..)
    return summed.reshape(g.shape[0], *view_shape)
