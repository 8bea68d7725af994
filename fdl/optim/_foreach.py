"""Leaf-list arithmetic for the optimizer blocks: the one place ``torch._foreach_*`` ops live.

Every building block in :mod:`fdl.optim.transform` works on flat lists of
leaves and calls the functions below. Each function returns **new** tensors and
never mutates its arguments; in-place ops are applied only to buffers the
function itself has just allocated.

Two paths compute the same numbers with the same sequence of torch ops:

* eager (not tracing): ``torch._foreach_*`` ops over the whole list, one call
  per op instead of one per leaf (less Python and dispatcher overhead);
* tracing (``torch.compile``): plain per-leaf ops, which the compiler fuses.

``_per_leaf()`` forces the per-leaf path in eager mode (used by the tests that
check both paths give identical results).

Inside :func:`fdl.optim.chain` the updates that one block hands to the next
are often buffers that block has just allocated and that nothing else holds
(Adam's ``m̂ / (√v̂ + ε)``, for instance). A block marks such outputs with
:func:`fresh`; while the chain runs, :func:`scale` and :func:`add` overwrite
marked buffers in place instead of allocating new ones (on a 10M-parameter
Adam this removes one of six allocations per leaf and step). The chain unmarks any
buffer that a block keeps in its state, and the marks end with the chain's
update, so nothing a caller passed in or gets back is ever modified. Only the
eager ``foreach`` path does this; traced code is left to the compiler.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

from fdl import tree

Tensor = torch.Tensor
Scalar = float | Tensor
Leaves = list[Tensor]

_FOREACH = True


@contextlib.contextmanager
def _per_leaf() -> Iterator[None]:
    """Force the per-leaf path in eager mode (for tests and debugging)."""
    global _FOREACH
    old, _FOREACH = _FOREACH, False
    try:
        yield
    finally:
        _FOREACH = old


# id -> tensor of the buffers the running chain may overwrite (None outside a chain).
# Holding the tensors keeps their ids from being reused while the marks live.
_FRESH: contextvars.ContextVar[dict[int, Tensor] | None] = contextvars.ContextVar(
    "fdl_optim_fresh", default=None
)


@contextlib.contextmanager
def fresh_scope() -> Iterator[None]:
    """Open a scope in which blocks may mark and reuse private buffers (one chain update)."""
    if torch.compiler.is_compiling():  # traced code: the compiler plans buffers itself
        yield
        return
    token = _FRESH.set({})
    try:
        yield
    finally:
        _FRESH.reset(token)


def fresh(xs: Leaves) -> None:
    """Mark ``xs`` as new buffers that nothing but the running chain holds."""
    if torch.compiler.is_compiling():
        return
    marks = _FRESH.get()
    if marks is not None and use_foreach(xs) and not any(x.requires_grad for x in xs):
        marks.update((id(x), x) for x in xs)


def unmark(state: object) -> None:
    """Remove the marks of every leaf of ``state`` (a new state a block returns)."""
    if torch.compiler.is_compiling():
        return
    marks = _FRESH.get()
    if marks:  # flatten only when something is marked
        for x in tree.leaves(state):
            marks.pop(id(x), None)


def _is_fresh(xs: Leaves) -> bool:
    if torch.compiler.is_compiling():
        return False
    marks = _FRESH.get()
    return bool(marks) and use_foreach(xs) and all(marks.get(id(x)) is x for x in xs)  # type: ignore[union-attr]


def use_foreach(xs: Leaves) -> bool:
    """True when the eager ``torch._foreach_*`` path applies to ``xs``."""
    return (
        _FOREACH
        and len(xs) > 0
        and not torch.compiler.is_compiling()
        # foreach ops have no vmap/grad batching rule: transformed tensors take the per-leaf path
        and not torch._C._functorch.is_functorch_wrapped_tensor(xs[0])
    )


def materialize(*scalars: Tensor) -> tuple[Tensor, ...]:
    """Per-step scalars, computed once per step rather than once per element.

    Under ``torch.compile`` inductor inlines scalar arithmetic (``beta ** t``,
    ``cos``, ...) into every elementwise kernel that reads it, which re-evaluates
    transcendental functions for each of millions of elements. A small reduction
    is never inlined into a consumer of another size, so routing the scalars
    through one (adding zeros: the values are unchanged) makes inductor compute
    them in a tiny kernel of their own. Eagerly this is a no-op.
    """
    if not torch.compiler.is_compiling():
        return scalars
    dtype = scalars[0].dtype
    stacked = torch.stack([torch.as_tensor(x, dtype=dtype) for x in scalars])  # (k,)
    stacked = torch.stack([stacked, torch.zeros_like(stacked)]).sum(0)  # (2, k) -> (k,)
    return tuple(stacked.unbind(0))


def _as(s: Scalar, x: Tensor) -> Scalar:
    """A tensor scalar in ``x``'s dtype (0-d leaves would otherwise promote to float64)."""
    return s.to(x.dtype) if isinstance(s, Tensor) and s.dtype != x.dtype else s


def scale(xs: Leaves, s: Scalar) -> Leaves:
    """``x * s`` (in place when ``xs`` are marked :func:`fresh`)."""
    if _is_fresh(xs):
        torch._foreach_mul_(xs, s)
        return list(xs)
    if use_foreach(xs):
        return list(torch._foreach_mul(xs, s))
    return [x * _as(s, x) for x in xs]


def mul(xs: Leaves, ys: Leaves) -> Leaves:
    """``x * y`` leafwise."""
    if use_foreach(xs):
        return list(torch._foreach_mul(xs, ys))
    return [x * y for x, y in zip(xs, ys, strict=True)]


def div(xs: Leaves, ys: Leaves) -> Leaves:
    """``x / y`` leafwise."""
    if use_foreach(xs):
        return list(torch._foreach_div(xs, ys))
    return [x / y for x, y in zip(xs, ys, strict=True)]


def add(xs: Leaves, ys: Leaves, alpha: float = 1.0) -> Leaves:
    """``x + alpha * y`` leafwise (``alpha`` a Python number; in place when ``xs`` are fresh)."""
    if _is_fresh(xs):
        torch._foreach_add_(xs, ys, alpha=alpha)
        return list(xs)
    if use_foreach(xs):
        return list(torch._foreach_add(xs, ys, alpha=alpha))
    return [torch.add(x, y, alpha=alpha) for x, y in zip(xs, ys, strict=True)]


def add_cast(xs: Leaves, ys: Leaves) -> Leaves:
    """``x + y`` leafwise, the result in ``x``'s dtype (``apply_updates``)."""
    ys = [y if y.dtype == x.dtype else y.to(x.dtype) for x, y in zip(xs, ys, strict=True)]
    if use_foreach(xs):
        return list(torch._foreach_add(xs, ys))
    return [x + y for x, y in zip(xs, ys, strict=True)]


def axpby(xs: Leaves, a: Scalar, ys: Leaves, b: Scalar) -> Leaves:
    """``a * x + b * y`` leafwise, computed as ``(x * a) + (y * b)``."""
    if use_foreach(xs):
        out = torch._foreach_mul(xs, a)
        torch._foreach_add_(out, torch._foreach_mul(ys, b))
        return list(out)
    return [x * _as(a, x) + y * _as(b, y) for x, y in zip(xs, ys, strict=True)]


def lerp(xs: Leaves, ys: Leaves, weight: float) -> Leaves:
    """``x + weight * (y - x)`` leafwise (``torch.lerp``)."""
    if use_foreach(xs):
        return list(torch._foreach_lerp(xs, ys, weight))
    return [torch.lerp(x, y, _as(weight, x)) for x, y in zip(xs, ys, strict=True)]


def decay_add(xs: Leaves, decay: float, ys: Leaves, alpha: float) -> Leaves:
    """``x * decay + alpha * y`` leafwise."""
    if use_foreach(xs):
        out = torch._foreach_mul(xs, decay)
        torch._foreach_add_(out, ys, alpha=alpha)
        return list(out)
    return [torch.add(x * _as(decay, x), y, alpha=alpha) for x, y in zip(xs, ys, strict=True)]


def decay_addcmul(xs: Leaves, decay: float, ys: Leaves, zs: Leaves, value: float) -> Leaves:
    """``x * decay + value * y * z`` leafwise."""
    if use_foreach(xs):
        out = torch._foreach_mul(xs, decay)
        torch._foreach_addcmul_(out, ys, zs, value=value)
        return list(out)
    return [torch.addcmul(x * decay, y, z, value=value) for x, y, z in zip(xs, ys, zs, strict=True)]


def decay_addcdiv(xs: Leaves, decay: float, ys: Leaves, zs: Leaves) -> Leaves:
    """``x * decay + y / z`` leafwise."""
    if use_foreach(xs):
        out = torch._foreach_mul(xs, decay)
        torch._foreach_addcdiv_(out, ys, zs)
        return list(out)
    return [torch.addcdiv(x * decay, y, z) for x, y, z in zip(xs, ys, zs, strict=True)]


def sqrt_affine(xs: Leaves, a: Scalar, b: Scalar) -> Leaves:
    """``sqrt(x) * a + b`` leafwise."""
    if use_foreach(xs):
        out = torch._foreach_sqrt(xs)
        torch._foreach_mul_(out, a)
        torch._foreach_add_(out, b)
        return list(out)
    return [torch.sqrt(x) * _as(a, x) + _as(b, x) for x in xs]


def sqrt_add(xs: Leaves, b: float) -> Leaves:
    """``sqrt(x) + b`` leafwise."""
    if use_foreach(xs):
        out = torch._foreach_sqrt(xs)
        torch._foreach_add_(out, b)
        return list(out)
    return [torch.sqrt(x) + b for x in xs]


def add_sqrt(xs: Leaves, b: float) -> Leaves:
    """``sqrt(x + b)`` leafwise."""
    if use_foreach(xs):
        out = torch._foreach_add(xs, b)
        torch._foreach_sqrt_(out)
        return list(out)
    return [torch.sqrt(x + b) for x in xs]


def addcmul(xs: Leaves, ys: Leaves, zs: Leaves, value: float) -> Leaves:
    """``x + value * y * z`` leafwise."""
    if use_foreach(xs):
        return list(torch._foreach_addcmul(xs, ys, zs, value=value))
    return [torch.addcmul(x, y, z, value=value) for x, y, z in zip(xs, ys, zs, strict=True)]


def div_sqrt_add(xs: Leaves, d: Scalar, b: float) -> Leaves:
    """``sqrt(x / d) + b`` leafwise."""
    if use_foreach(xs):
        out = torch._foreach_div(xs, d)
        torch._foreach_sqrt_(out)
        torch._foreach_add_(out, b)
        return list(out)
    return [torch.sqrt(x / _as(d, x)) + b for x in xs]


def sqrt_add_rdiv(xs: Leaves, b: float, c: Scalar) -> Leaves:
    """``c / (sqrt(x) + b)`` leafwise."""
    if use_foreach(xs):
        out = torch._foreach_sqrt(xs)
        torch._foreach_add_(out, b)
        torch._foreach_reciprocal_(out)
        torch._foreach_mul_(out, c)
        return list(out)
    return [torch.reciprocal(torch.sqrt(x) + b) * _as(c, x) for x in xs]


def centered_sqrt_add(xs: Leaves, ms: Leaves, eps: float) -> Leaves:
    """``sqrt(x - m * m) + eps`` leafwise (centered RMSprop)."""
    if use_foreach(xs):
        out = torch._foreach_addcmul(xs, ms, ms, value=-1.0)
        torch._foreach_sqrt_(out)
        torch._foreach_add_(out, eps)
        return list(out)
    return [
        torch.sqrt(torch.addcmul(x, m, m, value=-1.0)) + eps for x, m in zip(xs, ms, strict=True)
    ]


def abs_add(xs: Leaves, b: float) -> Leaves:
    """``|x| + b`` leafwise."""
    if use_foreach(xs):
        out = torch._foreach_abs(xs)
        torch._foreach_add_(out, b)
        return list(out)
    return [torch.abs(x) + b for x in xs]


def maximum(xs: Leaves, ys: Leaves) -> Leaves:
    """Elementwise ``max(x, y)`` leafwise."""
    if use_foreach(xs):
        return list(torch._foreach_maximum(xs, ys))
    return [torch.maximum(x, y) for x, y in zip(xs, ys, strict=True)]


def clamp(xs: Leaves, lo: float, hi: float) -> Leaves:
    """``min(max(x, lo), hi)`` leafwise."""
    if use_foreach(xs):
        out = torch._foreach_clamp_min(xs, lo)
        torch._foreach_clamp_max_(out, hi)
        return list(out)
    return [torch.clamp(x, lo, hi) for x in xs]


def norms(xs: Leaves, ord: float) -> Leaves:
    """The vector ``ord``-norm of every leaf, as 0-d tensors."""
    if use_foreach(xs):
        return list(torch._foreach_norm(xs, ord))
    return [torch.linalg.vector_norm(x, ord) for x in xs]


def where(cond: Tensor, xs: Leaves, ys: Leaves) -> Leaves:
    """``torch.where(cond, x, y)`` leafwise, ``cond`` a boolean scalar tensor."""
    return [torch.where(cond, x, y) for x, y in zip(xs, ys, strict=True)]


def where_zero(cond: Tensor, xs: Leaves) -> Leaves:
    """``x`` where ``cond`` else zeros, leafwise."""
    return [torch.where(cond, x, torch.zeros_like(x)) for x in xs]
