"""Reusing a chain's private buffers in place, eagerly: the whole contract in one place.

Inside :func:`fdl.optim.chain` the updates one block hands to the next are
often buffers that block has just allocated and that nothing else holds
(Adam's ``m̂ / (√v̂ + ε)``, for instance). Writing the next step's result into
such a buffer saves one allocation per leaf and step (on a 10M-parameter
eager Adam: 5 buffers per leaf and step instead of 6, which with the
allocator of :mod:`fdl.allocator` brought the pure update from 1.67–1.79x to
1.31–1.39x of torch's foreach Adam). This module is the only place that knows
about it; purity rests on the rules below, each tested in ``tests/test_optim.py``.

Contract:

1. A scope is one top-level ``chain.update`` (:func:`scope`), eager only: under
   ``torch.compile`` nothing is marked (the compiler plans buffers itself).
   Marks never outlive their scope, so nothing a caller passes in or gets back
   is marked once ``update`` returns.
2. A block may :func:`mark` only a list of tensors it allocated itself during
   this update and returns as its updates. It must not keep that list in its
   state; should it do so anyway, the chain :func:`unmark`\\ s every leaf of
   every state a block returns, so a kept buffer is never overwritten.
3. Only the ``_foreach`` ops declared ``overwrites_marked`` (``scale``,
   ``add``) write into their first argument, and only when every tensor of that
   list is marked. A block that passes its incoming updates as that argument
   must not read them again afterwards (each such block reads them once).
4. Tensors that require grad are never marked.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

from fdl import tree

Tensor = torch.Tensor

__all__ = ["is_marked", "mark", "scope", "unmark"]

# id -> tensor of the buffers the running chain may overwrite (None outside a scope).
# Holding the tensors keeps their ids from being reused while the marks live.
_MARKS: contextvars.ContextVar[dict[int, Tensor] | None] = contextvars.ContextVar(
    "fdl_optim_marks", default=None
)


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """One chain update: blocks may mark buffers, which all end with the scope."""
    if torch.compiler.is_compiling():
        yield
        return
    token = _MARKS.set({})
    try:
        yield
    finally:
        _MARKS.reset(token)


def mark(xs: list[Tensor]) -> None:
    """Mark ``xs`` as buffers that nothing but the running chain holds (rule 2)."""
    if torch.compiler.is_compiling():
        return
    marks = _MARKS.get()
    if marks is not None and xs and not any(x.requires_grad for x in xs):
        marks.update((id(x), x) for x in xs)


def unmark(state: object) -> None:
    """Remove the marks of every leaf of ``state`` (a new state a block returns)."""
    marks = _MARKS.get()
    if marks and not torch.compiler.is_compiling():  # flatten only when something is marked
        for x in tree.leaves(state):
            marks.pop(id(x), None)


def is_marked(xs: list[Tensor]) -> bool:
    """True when every tensor of ``xs`` is marked in the running scope (rule 3)."""
    marks = _MARKS.get()
    return bool(marks) and bool(xs) and all(marks.get(id(x)) is x for x in xs)  # type: ignore[union-attr]
