"""Leaf-list arithmetic for the optimizer blocks: the one place ``torch._foreach_*`` ops live.

Every building block works on flat lists of leaves and calls the ops below,
each named for what it computes (``ema``, ``root_plus``, ...). An op is
written **once**, as a chain of elementwise steps on :class:`_Lv` (a list of
leaves), and the :func:`_leafwise` decorator runs that one definition on one
of two paths that issue the same sequence of torch ops, so they give the same
bits:

* eager (not tracing): ``torch._foreach_*`` ops over the whole list, one call
  per step instead of one per leaf (less Python and dispatcher overhead); a
  step whose input is a buffer this op allocated itself runs in place, unless
  autograd records ops on it (writing there would overwrite a value saved for
  the backward pass, so differentiating through an update stays exact);
* tracing (``torch.compile``) or inside ``torch.func`` transforms (foreach ops
  have no batching rule): plain per-leaf ops, which the compiler fuses.

Every op returns **new** tensors and never writes into its arguments, with one
exception stated in :mod:`fdl.optim._reuse`: an op declared with
``overwrites_marked=True`` may write its result into its first argument when
the running chain marked that list as a private buffer.

``_per_leaf()`` forces the per-leaf path in eager mode (used by the tests that
check both paths give identical results).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch

from fdl.optim import _reuse

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
    them in a tiny kernel of their own. Eagerly this is a no-op. :func:`_leafwise`
    applies it to every tensor scalar an op receives, so blocks never call it.
    """
    if not torch.compiler.is_compiling() or not scalars:
        return scalars
    dtype = scalars[0].dtype
    stacked = torch.stack([torch.as_tensor(x, dtype=dtype) for x in scalars])  # (k,)
    stacked = torch.stack([stacked, torch.zeros_like(stacked)]).sum(0).to(dtype)  # (2, k) -> (k,)
    return tuple(stacked.unbind(0))


def _as(s: Any, x: Tensor) -> Any:
    """A tensor scalar in ``x``'s dtype (0-d leaves would otherwise promote to float64)."""
    return s.to(x.dtype) if isinstance(s, Tensor) and s.dtype != x.dtype else s


class _Lv:
    """A list of leaves on one path; each method is one elementwise step of an op.

    On the foreach path a step whose input is ``owned`` (allocated by this op, or
    marked by the chain for an op that may overwrite it) runs in place.
    """

    __slots__ = ("foreach", "owned", "xs")

    def __init__(self, xs: Leaves, foreach: bool, owned: bool = False) -> None:
        self.xs, self.foreach, self.owned = xs, foreach, owned

    def _step(self, name: str, per_leaf: Callable[..., Tensor], *args: Any, **kw: Any) -> _Lv:
        """``torch._foreach_<name>[_]`` on the foreach path, ``per_leaf`` leaf by leaf otherwise."""
        args = tuple(a.xs if isinstance(a, _Lv) else a for a in args)
        if self.foreach:
            if self.owned and not _in_graph(self.xs):
                getattr(torch, f"_foreach_{name}_")(self.xs, *args, **kw)
                return self
            return _Lv(list(getattr(torch, f"_foreach_{name}")(self.xs, *args, **kw)), True, True)
        out = [
            per_leaf(x, *(a[j] if isinstance(a, list) else _as(a, x) for a in args), **kw)
            for j, x in enumerate(self.xs)
        ]
        return _Lv(out, False, True)

    def mul(self, other: Any) -> _Lv:
        return self._step("mul", torch.mul, other)

    def div(self, other: Any) -> _Lv:
        return self._step("div", torch.div, other)

    def add(self, other: Any, alpha: float = 1.0) -> _Lv:
        if isinstance(other, _Lv | list):
            return self._step("add", torch.add, other, alpha=alpha)
        return self._step("add", torch.add, other)  # a scalar: alpha is not accepted

    def addcmul(self, ys: Any, zs: Any, value: float) -> _Lv:
        return self._step("addcmul", torch.addcmul, ys, zs, value=value)

    def lerp(self, ys: Any, weight: Scalar) -> _Lv:
        return self._step("lerp", torch.lerp, ys, weight)

    def maximum(self, ys: Any) -> _Lv:
        return self._step("maximum", torch.maximum, ys)

    def clamp_min(self, lo: float) -> _Lv:
        return self._step("clamp_min", torch.clamp_min, lo)

    def clamp_max(self, hi: float) -> _Lv:
        return self._step("clamp_max", torch.clamp_max, hi)

    def sqrt(self) -> _Lv:
        return self._step("sqrt", torch.sqrt)

    def abs(self) -> _Lv:
        return self._step("abs", torch.abs)

    def reciprocal(self) -> _Lv:
        return self._step("reciprocal", torch.reciprocal)


def _in_graph(xs: Leaves) -> bool:
    """True when autograd records ops on ``xs``: writing into them could overwrite a saved value."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


def _transformed(a: Any) -> bool:
    """True for a leaf list inside a ``torch.func`` transform (foreach ops have no rule)."""
    return isinstance(a, list) and bool(a) and torch._C._functorch.is_functorch_wrapped_tensor(a[0])


def _differentiable_scalar(args: tuple, kw: dict) -> bool:
    """True when a tensor scalar argument carries a gradient (a learned hyperparameter)."""
    values = (*args, *kw.values())
    return any(
        isinstance(a, Tensor)
        and (a.requires_grad or torch._C._functorch.is_functorch_wrapped_tensor(a))
        for a in values
    )


def _leafwise(fn: Callable[..., _Lv] | None = None, *, overwrites_marked: bool = False) -> Any:
    """Turn an op written once on :class:`_Lv` into a function of leaf lists.

    The path is chosen from the first list argument; tensor scalars are routed
    through :func:`materialize`. With ``overwrites_marked`` the first argument
    counts as owned (may be written in place) when the chain marked it.
    """

    def wrap(op: Callable[..., _Lv]) -> Callable[..., Leaves]:
        @functools.wraps(op)
        def run(xs: Leaves, *args: Any, **kw: Any) -> Leaves:
            # a hyperparameter that carries a gradient takes the per-leaf path, where it
            # enters every op as a tensor (foreach ops would read some scalars as numbers)
            foreach = (
                use_foreach(xs)
                and not _differentiable_scalar(args, kw)
                and not any(_transformed(a) for a in args)  # e.g. vmapped updates, plain params
            )
            if not foreach:
                args, kw = _materialized(args, kw)
            owned = overwrites_marked and foreach and _reuse.is_marked(xs)
            wrapped = [_Lv(a, foreach) if isinstance(a, list) else a for a in args]
            return list(op(_Lv(xs, foreach, owned), *wrapped, **kw).xs)

        return run

    return wrap(fn) if fn is not None else wrap


def _materialized(args: tuple, kw: dict) -> tuple[tuple, dict]:
    """``args`` and ``kw`` with their floating tensor scalars materialized together."""
    where = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
    keys = [k for k, v in kw.items() if isinstance(v, Tensor)]
    if not where and not keys:
        return args, kw
    values = iter(
        materialize(
            *(torch.as_tensor(args[i], dtype=torch.float64) for i in where),
            *(torch.as_tensor(kw[k], dtype=torch.float64) for k in keys),
        )
    )
    new_args = list(args)
    for i in where:
        new_args[i] = next(values)
    return tuple(new_args), {**kw, **{k: next(values) for k in keys}}


# ---------------------------------------------------------------------------
# the ops, each named for what it computes
# ---------------------------------------------------------------------------


@_leafwise(overwrites_marked=True)
def scale(x: _Lv, s: Scalar) -> _Lv:
    """``s * x``."""
    return x.mul(s)


@_leafwise(overwrites_marked=True)
def add(x: _Lv, y: _Lv, alpha: float = 1.0) -> _Lv:
    """``x + alpha * y`` (``alpha`` a Python number)."""
    return x.add(y, alpha=alpha)


@_leafwise
def mul(x: _Lv, y: _Lv) -> _Lv:
    """``x * y``."""
    return x.mul(y)


@_leafwise
def div(x: _Lv, y: _Lv) -> _Lv:
    """``x / y``."""
    return x.div(y)


@_leafwise
def _sum(x: _Lv, y: _Lv) -> _Lv:
    return x.add(y)


def add_in_dtype(xs: Leaves, ys: Leaves) -> Leaves:
    """``x + y``, each result in ``x``'s dtype (``apply_updates``)."""
    return _sum(
        xs, [y if y.dtype == x.dtype else y.to(x.dtype) for x, y in zip(xs, ys, strict=True)]
    )


@_leafwise
def linear_combination(x: _Lv, a: Scalar, y: _Lv, b: Scalar) -> _Lv:
    """``a * x + b * y``, computed as ``(x * a) + (y * b)``."""
    return x.mul(a).add(y.mul(b))


@_leafwise
def decayed_sum(x: _Lv, decay: Scalar, y: _Lv) -> _Lv:
    """``decay * x + y`` (a momentum buffer without dampening)."""
    return x.mul(decay).add(y)


@_leafwise
def ema(m: _Lv, g: _Lv, decay: Scalar) -> _Lv:
    """The moving average ``decay * m + (1 - decay) * g``, as ``lerp(m, g, 1 - decay)``."""
    return m.lerp(g, 1.0 - decay)


@_leafwise
def ema_of_squares(v: _Lv, g: _Lv, decay: Scalar) -> _Lv:
    """The moving average of squares ``decay * v + (1 - decay) * g * g``."""
    if isinstance(decay, Tensor):  # addcmul's value is a number: a tensor decay is multiplied
        return v.mul(decay).add(g.mul(g).mul(1.0 - decay))
    return v.mul(decay).addcmul(g, g, value=1.0 - decay)


@_leafwise
def add_squares(s: _Lv, g: _Lv) -> _Lv:
    """The running sum of squares ``s + g * g``."""
    return s.addcmul(g, g, value=1.0)


@_leafwise
def shift(x: _Lv, c: Scalar) -> _Lv:
    """``x + c`` (``c`` a scalar)."""
    return x.add(c)


@_leafwise
def root_affine(v: _Lv, a: Scalar, b: Scalar) -> _Lv:
    """``a * sqrt(v) + b``."""
    return v.sqrt().mul(a).add(b)


@_leafwise
def root_plus(v: _Lv, eps: float) -> _Lv:
    """``sqrt(v) + eps``."""
    return v.sqrt().add(eps)


@_leafwise
def rms(v: _Lv, eps: float) -> _Lv:
    """The root mean square ``sqrt(v + eps)`` of a mean of squares ``v``."""
    return v.add(eps).sqrt()


@_leafwise
def corrected_root_plus(v: _Lv, correction: Scalar, eps: float) -> _Lv:
    """``sqrt(v / correction) + eps`` (a bias-corrected root second moment)."""
    return v.div(correction).sqrt().add(eps)


@_leafwise
def scaled_inverse_root(v: _Lv, eps: float, c: Scalar) -> _Lv:
    """``c / (sqrt(v) + eps)``, computed as ``reciprocal(sqrt(v) + eps) * c``."""
    return v.sqrt().add(eps).reciprocal().mul(c)


@_leafwise
def std_plus(s: _Lv, m: _Lv, eps: float) -> _Lv:
    """The standard deviation plus eps, ``sqrt(s - m * m) + eps`` (centered RMSprop)."""
    return s.addcmul(m, m, value=-1.0).sqrt().add(eps)


@_leafwise
def abs_plus(g: _Lv, eps: float) -> _Lv:
    """``|g| + eps``."""
    return g.abs().add(eps)


@_leafwise
def maximum(x: _Lv, y: _Lv) -> _Lv:
    """Elementwise ``max(x, y)``."""
    return x.maximum(y)


@_leafwise
def clamp(x: _Lv, lo: float, hi: float) -> _Lv:
    """``min(max(x, lo), hi)``."""
    return x.clamp_min(lo).clamp_max(hi)


def norms(xs: Leaves, ord: float) -> Leaves:
    """The vector ``ord``-norm of every leaf, as 0-d tensors."""
    if use_foreach(xs):
        return list(torch._foreach_norm(xs, ord))
    return [torch.linalg.vector_norm(x, ord) for x in xs]


def where(cond: Tensor, xs: Leaves, ys: Leaves) -> Leaves:
    """``torch.where(cond, x, y)`` leafwise, ``cond`` a boolean scalar tensor."""
    (cond,) = materialize(cond)
    return [torch.where(cond, x, y) for x, y in zip(xs, ys, strict=True)]


def where_zero(cond: Tensor, xs: Leaves) -> Leaves:
    """``x`` where ``cond`` else zeros, leafwise."""
    return [torch.where(cond, x, torch.zeros_like(x)) for x in xs]
