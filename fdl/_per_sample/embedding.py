r"""The per-sample rule of an embedding lookup ``out[i, t] = W[idx[i, t]]``.

With ``δ[i, t] = ∂ℓ_i/∂out[i, t]`` (``(B, T, d)``, ``T`` every index position of
example ``i`` flattened) and ``P`` the padding row (which gets no gradient):

* ``grad_W[i][v] = Σ_t [idx[i,t] = v] [v ≠ P] δ[i, t]`` — a scatter-add of the
  output gradients by index;
* ``‖grad_W[i]‖² = Σ_{t,s} [idx[i,t] = idx[i,s] ≠ P] (δ[i,t] · δ[i,s])`` — the
  Gram form, ``O(T² d)`` per example without the ``V × d`` table; for long
  sequences (``T > d``) the rows are instead summed per distinct
  ``(example, index)`` pair and squared, ``O(T d)``;
* ``Σ_i w[i] grad_W[i] = Σ_{i,t} w[i] δ[i, t]`` scattered to row ``idx[i, t]``:
  one ``index_add``.
"""

from __future__ import annotations

import torch


def _factors(idx: torch.Tensor, g: torch.Tensor, pad: int | None) -> tuple[torch.Tensor, ...]:
    """Indices ``(B, T)`` and output gradients ``(B, T, d)`` with padding positions zeroed."""
    b = g.shape[0]
    idx = idx.reshape(b, -1).long()  # (B, T)
    g = g.reshape(b, idx.shape[1], g.shape[-1])  # (B, T, d)
    if pad is not None:
        g = g * (idx != pad).unsqueeze(-1).to(g.dtype)
    return idx, g


def per_sample(idx: torch.Tensor, g: torch.Tensor, pad: int | None, rows: int) -> torch.Tensor:
    """``(B, V, d)`` per-example gradients of the table."""
    idx, g = _factors(idx, g, pad)
    b, _, d = g.shape
    out = g.new_zeros(b, rows, d)
    return out.scatter_add(1, idx.unsqueeze(-1).expand_as(g), g)  # (B, V, d)


def sq_norms(idx: torch.Tensor, g: torch.Tensor, pad: int | None, rows: int) -> torch.Tensor:
    """``(B,)`` squared norms: Gram form for ``T <= d``, per-row sums otherwise."""
    idx, g = _factors(idx, g, pad)
    b, t, d = g.shape
    if t <= d:
        same = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(g.dtype)  # (B, T, T)
        return (same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    pair = idx + rows * torch.arange(b, device=idx.device).unsqueeze(1)  # (B, T): i·V + idx
    uniq, inverse = torch.unique(pair.flatten(), return_inverse=True)
    sums = g.new_zeros(uniq.shape[0], d).index_add(0, inverse, g.reshape(b * t, d))  # (U, d)
    owner = uniq // rows  # the example of each distinct (example, index) pair
    return g.new_zeros(b).index_add(0, owner, sums.square().sum(1))


def weighted_sum(
    idx: torch.Tensor, g: torch.Tensor, pad: int | None, rows: int, w: torch.Tensor
) -> torch.Tensor:
    """``Σ_i w[i] grad_W[i]``, ``(V, d)``."""
    idx, g = _factors(idx, g, pad)
    gw = g * w.to(g.dtype).reshape(-1, 1, 1)  # (B, T, d)
    return g.new_zeros(rows, g.shape[-1]).index_add(0, idx.flatten(), gw.flatten(0, 1))
