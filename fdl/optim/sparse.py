"""Sparse Adam over dense gradients: only the entries a gradient holds move, as SparseAdam.

``torch.optim.SparseAdam`` takes sparse COO gradients (``nn.Embedding(sparse=True)``)
and updates the moments and the params at the stored entries only. fdl's gradients
are dense, so an entry is *present* where the gradient is non-zero: exactly the
entries ``g.to_sparse()`` stores, which is how the parity tests feed torch. (A sparse
gradient may also store explicit zeros, which torch then treats as present: fdl
leaves them alone.)
"""

from __future__ import annotations

from typing import Any

import torch

from fdl.optim import _common as C
from fdl.optim.base import GradientTransformation

__all__ = ["ScaleBySparseAdamState", "scale_by_sparse_adam"]

Tensor = torch.Tensor
Leaves = list[Tensor]


class ScaleBySparseAdamState(C.MomentsState):
    """State of :func:`scale_by_sparse_adam`: count and the moments ``mu``, ``nu``."""

    __slots__ = ()


def scale_by_sparse_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> GradientTransformation:
    r"""SparseAdam's scaling: Adam's moments and step at the entries where ``g ≠ 0`` only.

    With :math:`P = \{i : g_i \ne 0\}`, for :math:`i \in P`

    .. math::
        m_i \leftarrow m_i + (1-\beta_1)(g_i - m_i), \quad
        v_i \leftarrow v_i + (1-\beta_2)(g_i^2 - v_i), \quad
        u_i = \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,\frac{m_i}{\sqrt{v_i} + \epsilon}

    and :math:`m_i, v_i` unchanged, :math:`u_i = 0` elsewhere; ``t`` counts every
    update (torch counts every ``step()``). Note ``ε`` is added to the root of the
    *uncorrected* ``v`` (Adam adds it after the correction).

    Returns:
        A transformation with :class:`ScaleBySparseAdamState`.

    Example:
        >>> import torch
        >>> tx = scale_by_sparse_adam()
        >>> u, s = tx.update({"w": torch.tensor([2.0, 0.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"], s.mu["w"]  # the absent entry keeps its moments and does not move
        (tensor([1., 0.]), tensor([0.2000, 0.0000]))
    """
    if not 0.0 < eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= b1 < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {b1}")
    if not 0.0 <= b2 < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {b2}")

    def step(g: Leaves, state: ScaleBySparseAdamState, mu: Leaves, nu: Leaves) -> Any:
        t = C.step_number(state.count)
        c = torch.sqrt(1.0 - b2**t) / (1.0 - b1**t)  # float64 step-size factor

        def leaf(gi: Tensor, m: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            present = gi != 0
            m = torch.where(present, m + (gi - m) * (1.0 - b1), m)
            v = torch.where(present, v + (gi * gi - v) * (1.0 - b2), v)
            # absent entries read 1, not a v that may be 0: sqrt's derivative stays finite
            root = torch.sqrt(torch.where(present, v, torch.ones_like(v)))
            step_ = (m / (root + eps)) * c.to(gi.dtype)
            return torch.where(present, step_, torch.zeros_like(step_)), m, v

        return C.leafwise(leaf, g, mu=mu, nu=nu)

    return C.stateful(
        "scale_by_sparse_adam",
        ScaleBySparseAdamState,
        step,
        trees=("mu", "nu"),
        hands_on_fresh=True,
    )
