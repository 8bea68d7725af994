"""Per-layer clipping on a per-example gradient representation (``fdl._per_sample.core``).

The representation answers ``‖grad_i‖²`` over the whole pytree and ``Σ_i w_i grad_i``
with one weight for every leaf. Per-layer clipping needs both per params leaf ``l``:
``‖grad_{i,l}‖²`` and ``Σ_i w_{i,l} grad_{i,l}``. On the rules path a leaf written by a
single layer call reads its rule directly (the per-example weight gradient of a linear
layer is still never formed); a leaf shared by several calls sums its per-example parts.
"""

from __future__ import annotations

from typing import Any

import torch

from fdl._per_sample import core as _core
from fdl._per_sample import rules as _rules
from fdl._per_sample import views as _views

__all__ = ["leaf_sq_norms", "leaf_weighted_sums"]


def _bias_sq_norms(r: _rules.Record) -> torch.Tensor:
    return _rules.bias_per_sample(r).square().sum(1)


# role -> (per-example gradients, their squared norms, their weighted sum)
_RULES = {
    "weight": (_rules.weight_per_sample, _rules.weight_sq_norms, _rules.weight_weighted_sum),
    "bias": (_rules.bias_per_sample, _bias_sq_norms, _rules.bias_weighted_sum),
}


def _lift(rep: _core.Factored, r: _rules.Record, role: str, g: torch.Tensor) -> torch.Tensor:
    slot = r.weight if role == "weight" else r.bias
    return _views.lift(rep.table, slot, g)  # type: ignore[arg-type]


def leaf_sq_norms(rep: Any) -> list[torch.Tensor]:
    """Per params leaf, the ``(B,)`` squared norms ``‖grad_{i,l}‖²``."""
    if isinstance(rep, _core.Dense):
        return [leaf.flatten(1).square().sum(1) for leaf in rep.leaves]
    if not isinstance(rep, _core.Factored):
        raise TypeError(f"per-layer clipping needs a Dense or Factored rep, got {type(rep)}")
    out = []
    for p, slots in zip(rep.params, rep.slots, strict=True):
        if len(slots) == 1:  # views are norm preserving: the rule's norm is the leaf's
            r, role = slots[0]
            out.append(_core.scaled(_RULES[role][1](r).to(p.dtype), rep.scale**2))
            continue
        # unused (zero), or shared by several layer calls: sum the parts, then square
        g = torch.zeros((rep.n, *p.shape), dtype=p.dtype, device=p.device)
        for r, role in slots:
            g = g + _lift(rep, r, role, _RULES[role][0](r)).to(p.dtype)
        out.append(_core.scaled(g.flatten(1).square().sum(1), rep.scale**2))
    return out


def leaf_weighted_sums(rep: Any, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per params leaf ``l``, ``Σ_i weights[l][i] · grad_{i,l}`` (the leaf's shape)."""
    if isinstance(rep, _core.Dense):
        return [
            torch.tensordot(w.to(leaf.dtype), leaf, dims=1)
            for leaf, w in zip(rep.leaves, weights, strict=True)
        ]
    out = []
    for p, slots, w in zip(rep.params, rep.slots, weights, strict=True):
        w = _core.scaled(w, rep.scale)
        total = torch.zeros_like(p)
        for r, role in slots:
            part = _RULES[role][2](r, w).unsqueeze(0)  # (1, *slot shape)
            total = total + _lift(rep, r, role, part)[0].to(p.dtype)
        out.append(total)
    return out
