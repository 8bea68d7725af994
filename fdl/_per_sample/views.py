"""Slots: the parameters a recorded layer call reads, and views of them.

A layer often reads a *view* of a parameter rather than the parameter itself:
``MultiheadAttention`` splits ``in_proj_weight`` into ``W_q, W_k, W_v`` with
``chunk``, norms reshape their weight to broadcast. Each parameter leaf is a
slot; a view ``v = f(p)`` of a slot (``f`` one of :data:`VIEW_FUNCS`) is a new
slot that remembers ``f``. A rule gives the per-example gradients of the view,
``(B, *v.shape)``; :meth:`Slot.lift` maps them to the parameter by the
vector-Jacobian product of ``f`` (``f`` is linear, so this is exact):

``grad_p[i] = (∂f/∂p)ᵀ grad_v[i]`` — for ``chunk``/slicing the gradient is
scattered into its block of zeros, for ``reshape`` it is reshaped back.

``isometric`` views (``reshape``, ``chunk``, basic slicing, ...) pick distinct
entries of ``p``, so ``‖grad_p[i]‖ = ‖grad_v[i]‖`` and norms can be taken on
the view's gradients directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# views whose vector-Jacobian product scatters into distinct entries (norm preserving)
VIEW_FUNCS: frozenset[Any] = frozenset(
    {
        torch.Tensor.reshape,
        torch.Tensor.view,
        torch.Tensor.chunk,
        torch.Tensor.split,
        torch.Tensor.narrow,
        torch.Tensor.unsqueeze,
        torch.Tensor.squeeze,
        torch.Tensor.flatten,
        torch.Tensor.__getitem__,
        torch.reshape,
        torch.chunk,
        torch.split,
        torch.narrow,
        torch.unsqueeze,
        torch.squeeze,
        torch.flatten,
    }
)


def _basic_index(idx: Any) -> bool:
    """An index made of ints, slices, ``None`` and ``...`` only (no tensors or lists)."""
    parts = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, int | slice) or i is None or i is Ellipsis for i in parts)


def is_view_call(func: Any, args: tuple[Any, ...]) -> bool:
    """``func(*args)`` is a norm-preserving view of its first argument."""
    if func not in VIEW_FUNCS:
        return False
    return func is not torch.Tensor.__getitem__ or _basic_index(args[1])


@dataclass
class Slot:
    """A parameter leaf (``parent is None``) or a view ``f(parent)`` of another slot."""

    param: int  # index of the parameter leaf the slot reads
    shape: tuple[int, ...]
    parent: int | None = None  # the slot this one is a view of
    f: Callable[[torch.Tensor], torch.Tensor] | None = None  # the view, parent -> this

    def is_param(self) -> bool:
        return self.parent is None


def lift(slots: list[Slot], s: int, g: torch.Tensor) -> torch.Tensor:
    """Per-example gradients ``g: (B, *slots[s].shape)`` of slot ``s`` -> of its parameter."""
    while slots[s].parent is not None:
        slot = slots[s]
        parent = slots[slot.parent]  # type: ignore[index]
        primal = torch.zeros(parent.shape, dtype=g.dtype, device=g.device)
        _, vjp = torch.func.vjp(slot.f, primal)  # f is linear: the primal's value is irrelevant
        g = torch.func.vmap(lambda v, vjp=vjp: vjp(v)[0])(g)  # (B, *parent.shape)
        s = slot.parent  # type: ignore[assignment]
    return g
