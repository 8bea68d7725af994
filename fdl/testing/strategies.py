"""Hypothesis strategies for testing formulas: shapes, dtypes and tensors with extreme values.

Needs ``hypothesis`` (a development dependency); ``import fdl.testing`` does
not, and loads this module on first use of ``fdl.testing.strategies``.

Tensors are drawn through ``hypothesis.extra.numpy`` so they shrink to
simple failing examples, and floats are biased towards the edges hypothesis
knows (zero, signed zero, the bounds, tiny and huge magnitudes, subnormals).

Example:
    >>> import torch
    >>> from hypothesis import given, settings
    >>> from fdl.testing import strategies as fst
    >>> @settings(max_examples=10, deadline=None)
    ... @given(fst.logits(fst.shapes(min_rank=2, max_rank=2)))
    ... def test_softmax_rows_sum_to_one(z):
    ...     p = torch.exp(z - z.amax(dim=-1, keepdim=True))
    ...     p = p / p.sum(dim=-1, keepdim=True)
    ...     assert torch.allclose(p.sum(-1), torch.ones(z.shape[0]))
    >>> test_softmax_rows_sum_to_one()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fdl import random as fr

__all__ = [
    "class_targets",
    "classification_inputs",
    "dtypes",
    "keys",
    "logits",
    "probabilities",
    "shapes",
    "tensors",
]

Shape = tuple[int, ...]
ShapeLike = Shape | Sequence[int] | st.SearchStrategy | None
DtypeLike = torch.dtype | st.SearchStrategy | None

_NUMPY = {
    torch.float64: np.float64,
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.bfloat16: np.float32,  # drawn as float32 within bfloat16's range, then rounded
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.int16: np.int16,
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.bool: np.bool_,
}
_WIDTH: dict[torch.dtype, Literal[16, 32, 64]] = {
    torch.float64: 64,
    torch.float32: 32,
    torch.float16: 16,
    torch.bfloat16: 32,
}


def shapes(
    *, min_rank: int = 0, max_rank: int = 4, min_dim: int = 1, max_dim: int = 8
) -> st.SearchStrategy[Shape]:
    """Tensor shapes with ``min_rank <= len(shape) <= max_rank`` and dims in ``[min_dim, max_dim]``.

    Args:
        min_rank: fewest dimensions.
        max_rank: most dimensions.
        min_dim: smallest size of a dimension (``0`` allows empty tensors).
        max_dim: largest size of a dimension.

    Returns:
        A strategy of tuples of ints.

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=10, deadline=None)
        ... @given(shapes(min_rank=1, max_rank=3, max_dim=4))
        ... def check(shape):
        ...     assert 1 <= len(shape) <= 3 and all(1 <= d <= 4 for d in shape)
        >>> check()
    """
    if not 0 <= min_rank <= max_rank:
        raise ValueError(f"shapes: need 0 <= min_rank <= max_rank, got {min_rank}, {max_rank}")
    if not 0 <= min_dim <= max_dim:
        raise ValueError(f"shapes: need 0 <= min_dim <= max_dim, got {min_dim}, {max_dim}")
    return hnp.array_shapes(
        min_dims=min_rank, max_dims=max_rank, min_side=min_dim, max_side=max_dim
    )


def dtypes(
    *, floating: bool = True, half: bool = False, integer: bool = False, boolean: bool = False
) -> st.SearchStrategy[torch.dtype]:
    """Torch dtypes: float32/float64, optionally float16/bfloat16, int64/int32, bool.

    Args:
        floating: include ``float32`` and ``float64``.
        half: include ``float16`` and ``bfloat16``.
        integer: include ``int64`` and ``int32``.
        boolean: include ``bool``.

    Returns:
        A strategy of ``torch.dtype``.

    Example:
        >>> import torch
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=10, deadline=None)
        ... @given(dtypes(half=True))
        ... def check(dtype):
        ...     assert dtype.is_floating_point
        >>> check()
    """
    choices = []
    if floating:
        choices += [torch.float32, torch.float64]
    if half:
        choices += [torch.float16, torch.bfloat16]
    if integer:
        choices += [torch.int64, torch.int32]
    if boolean:
        choices += [torch.bool]
    if not choices:
        raise ValueError("dtypes: every kind is switched off; nothing to draw")
    return st.sampled_from(choices)


def _as_strategy(value: Any, default: st.SearchStrategy) -> st.SearchStrategy:
    if value is None:
        return default
    if isinstance(value, st.SearchStrategy):
        return value
    return st.just(value)


def _inward(value: float, dtype: torch.dtype, up: bool) -> float:
    """``value`` rounded to ``dtype``, moving inwards (up for a lower bound) when inexact."""
    t = torch.tensor(value, dtype=torch.float64).to(dtype)
    if up and float(t) < value:
        t = torch.nextafter(t, torch.tensor(float("inf"), dtype=dtype))
    elif not up and float(t) > value:
        t = torch.nextafter(t, torch.tensor(float("-inf"), dtype=dtype))
    return float(t)


def _float_bounds(
    dtype: torch.dtype, min_value: float | None, max_value: float | None
) -> tuple[float, float]:
    big = float(torch.finfo(dtype).max)
    lo = -big if min_value is None else _inward(max(float(min_value), -big), dtype, up=True)
    hi = big if max_value is None else _inward(min(float(max_value), big), dtype, up=False)
    if lo > hi:
        raise ValueError(f"tensors: no {dtype} value lies in [{min_value}, {max_value}]")
    return lo, hi


def _float_elements(
    dtype: torch.dtype,
    lo: float,
    hi: float,
    allow_nan: bool,
    allow_inf: bool,
    allow_subnormal: bool | None,
    edges: bool,
) -> st.SearchStrategy[float]:
    finite = st.floats(
        min_value=lo,
        max_value=hi,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=allow_subnormal,
        width=_WIDTH[dtype],
    )
    specials: list[float] = []
    if allow_nan:
        specials.append(float("nan"))
    if allow_inf:
        specials += [float("-inf"), float("inf")]
    if edges:  # unbounded: stress the ends of the dtype's range
        info = torch.finfo(dtype)
        ends = [info.max, info.tiny]
        if allow_subnormal is not False:
            ends.append(info.tiny * info.eps)  # the smallest subnormal
        specials += [v for e in ends for v in (e, -e)]
    if not specials:
        return finite
    # about one element in four is special
    return st.one_of(finite, finite, finite, st.sampled_from(specials))


def tensors(
    shape: ShapeLike = None,
    *,
    dtype: DtypeLike = torch.float32,
    min_value: float | None = None,
    max_value: float | None = None,
    allow_nan: bool = False,
    allow_inf: bool = False,
    allow_subnormal: bool | None = None,
) -> st.SearchStrategy[torch.Tensor]:
    """Tensors of a shape and dtype, with values anywhere in a range, edges included.

    With no bounds, floating values span the whole finite range of the dtype
    and about a quarter of the elements are drawn from its ends (``±finfo.max``,
    ``±finfo.tiny``, the smallest subnormal) and, when allowed, ``nan`` and
    ``±inf``: tiny and huge magnitudes turn up in nearly every example. Bound
    the values for formulas with a domain (``min_value=1e-6`` for a ``log``);
    then the bounds themselves (and ``nan``/``inf`` when allowed) are the
    extremes.

    Args:
        shape: a shape, a strategy of shapes, or ``None`` for :func:`shapes`.
        dtype: a dtype or a strategy of dtypes (floating, integer or bool).
        min_value: smallest value (inclusive); ``None`` for the dtype's.
        max_value: largest value (inclusive); ``None`` for the dtype's.
        allow_nan: also draw NaN (floating dtypes).
        allow_inf: also draw ``+inf`` and ``-inf`` (floating dtypes).
        allow_subnormal: also draw subnormal floats; ``None`` draws them
            wherever the bounds include them.

    Returns:
        A strategy of CPU tensors.

    Example:
        >>> import torch
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=10, deadline=None)
        ... @given(tensors((2, 3), dtype=torch.float64, min_value=-1, max_value=1))
        ... def check(x):
        ...     assert x.shape == (2, 3) and x.dtype == torch.float64 and x.abs().max() <= 1
        >>> check()
    """
    shape_st = _as_strategy(shape, shapes())
    dtype_st = _as_strategy(dtype, dtypes())

    @st.composite
    def draw(data: st.DrawFn) -> torch.Tensor:
        dt = data(dtype_st)
        shp = tuple(data(shape_st))
        if dt not in _NUMPY:
            raise ValueError(f"tensors: unsupported dtype {dt}")
        lo = hi = 0.0
        if dt.is_floating_point:
            lo, hi = _float_bounds(dt, min_value, max_value)
            unbounded = min_value is None and max_value is None
            elements = _float_elements(dt, lo, hi, allow_nan, allow_inf, allow_subnormal, unbounded)
        elif dt is torch.bool:
            elements = st.booleans()
        else:
            info = torch.iinfo(dt)
            lo = info.min if min_value is None else max(int(np.ceil(min_value)), info.min)
            hi = info.max if max_value is None else min(int(np.floor(max_value)), info.max)
            elements = st.integers(lo, hi)
        arr = data(hnp.arrays(_NUMPY[dt], shp, elements=elements))
        x = torch.from_numpy(np.array(arr, copy=True)).to(dt)
        if dt is torch.bfloat16:  # rounding from float32 may step past a bound
            x = torch.where(torch.isfinite(x), x.clamp(lo, hi), x)
        return x

    return draw()


def logits(
    shape: ShapeLike = None, *, dtype: DtypeLike = torch.float32, bound: float = 100.0
) -> st.SearchStrategy[torch.Tensor]:
    """Finite logits in ``[-bound, bound]`` (default ±100: saturates a naive softmax).

    Args:
        shape: a shape, a strategy of shapes, or ``None`` for :func:`shapes`.
        dtype: a floating dtype or a strategy of them.
        bound: largest magnitude.

    Returns:
        A strategy of tensors.

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=10, deadline=None)
        ... @given(logits((4, 3)))
        ... def check(z):
        ...     assert z.abs().max() <= 100
        >>> check()
    """
    return tensors(shape, dtype=dtype, min_value=-bound, max_value=bound)


def probabilities(
    shape: ShapeLike = None,
    *,
    dtype: DtypeLike = torch.float32,
    dim: int | None = -1,
    min_value: float = 0.0,
    max_value: float = 1.0,
) -> st.SearchStrategy[torch.Tensor]:
    """Probabilities: distributions along ``dim`` (sum to one), or elementwise with ``dim=None``.

    Distributions are built as ``exp(z - max z) / sum exp(z - max z)`` from
    logits ``z`` in ``[-30, 30]`` in float64, so entries range from about
    ``1e-26`` to 1 (exact zeros from underflow are avoided), then cast to
    ``dtype``. With ``dim=None`` each element is drawn in
    ``[min_value, max_value]`` (e.g. ``min_value=1e-7, max_value=1 - 1e-7``
    for the input of a binary cross-entropy).

    Args:
        shape: a shape, a strategy of shapes, or ``None`` for :func:`shapes`
            of rank at least 1.
        dtype: a floating dtype or a strategy of them.
        dim: the axis that sums to one, or ``None`` for elementwise values.
        min_value: elementwise lower bound (``dim=None`` only).
        max_value: elementwise upper bound (``dim=None`` only).

    Returns:
        A strategy of tensors.

    Example:
        >>> import torch
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=10, deadline=None)
        ... @given(probabilities((5, 3), dtype=torch.float64))
        ... def check(p):
        ...     assert torch.allclose(p.sum(-1), torch.ones(5, dtype=torch.float64))
        >>> check()
    """
    if dim is None:
        if not 0.0 <= min_value <= max_value <= 1.0:
            raise ValueError(
                f"probabilities: need 0 <= min_value <= max_value <= 1, got {min_value}, "
                f"{max_value}"
            )
        return tensors(shape, dtype=dtype, min_value=min_value, max_value=max_value)
    shape_st = _as_strategy(shape, shapes(min_rank=1))
    dtype_st = _as_strategy(dtype, dtypes())

    @st.composite
    def draw(data: st.DrawFn) -> torch.Tensor:
        dt = data(dtype_st)
        shp = tuple(data(shape_st))
        if len(shp) == 0:
            raise ValueError("probabilities: a distribution needs a shape of rank >= 1")
        z = data(tensors(shp, dtype=torch.float64, min_value=-30.0, max_value=30.0))
        w = torch.exp(z - z.amax(dim=dim, keepdim=True))
        return (w / w.sum(dim=dim, keepdim=True)).to(dt)

    return draw()


def class_targets(
    num_classes: int, shape: ShapeLike = None, *, ignore_index: int | None = None
) -> st.SearchStrategy[torch.Tensor]:
    """Class-index targets: int64 tensors with values in ``[0, num_classes)``.

    Args:
        num_classes: number of classes.
        shape: a shape, a strategy of shapes, or ``None`` for :func:`shapes`.
        ignore_index: when given, elements may also take this value.

    Returns:
        A strategy of int64 tensors.

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=10, deadline=None)
        ... @given(class_targets(3, (6,), ignore_index=-100))
        ... def check(t):
        ...     assert bool(((t >= 0) & (t < 3) | (t == -100)).all())
        >>> check()
    """
    if num_classes < 1:
        raise ValueError(f"class_targets: num_classes must be >= 1, got {num_classes}")
    shape_st = _as_strategy(shape, shapes())
    elements = st.integers(0, num_classes - 1)
    if ignore_index is not None:
        elements = st.one_of(elements, st.just(int(ignore_index)))

    @st.composite
    def draw(data: st.DrawFn) -> torch.Tensor:
        shp = tuple(data(shape_st))
        arr = data(hnp.arrays(np.int64, shp, elements=elements))
        return torch.from_numpy(np.array(arr, copy=True))

    return draw()


def classification_inputs(
    *,
    max_batch: int = 8,
    min_classes: int = 2,
    max_classes: int = 10,
    max_extra_dims: int = 0,
    dtype: DtypeLike = torch.float32,
    bound: float = 100.0,
    ignore_index: int | None = None,
) -> st.SearchStrategy[tuple[torch.Tensor, torch.Tensor]]:
    """Matching ``(logits, target)`` pairs in torch's cross-entropy layout.

    ``logits`` has shape ``(N, C, d_1, ..., d_k)`` (``k <= max_extra_dims``)
    with values in ``[-bound, bound]``; ``target`` has shape
    ``(N, d_1, ..., d_k)`` with class indices in ``[0, C)`` (or
    ``ignore_index``).

    Args:
        max_batch: largest ``N`` (at least 1).
        min_classes: fewest classes ``C``.
        max_classes: most classes ``C``.
        max_extra_dims: most trailing dimensions ``k``.
        dtype: the logits' dtype or a strategy of dtypes.
        bound: largest logit magnitude.
        ignore_index: when given, targets may also take this value.

    Returns:
        A strategy of ``(logits, target)`` tuples.

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=10, deadline=None)
        ... @given(classification_inputs(max_extra_dims=1))
        ... def check(inputs):
        ...     z, t = inputs
        ...     assert z.shape[0] == t.shape[0] and z.shape[2:] == t.shape[1:]
        ...     assert bool(((t >= 0) & (t < z.shape[1])).all())
        >>> check()
    """
    if not 1 <= min_classes <= max_classes:
        raise ValueError(
            f"classification_inputs: need 1 <= min_classes <= max_classes, got "
            f"{min_classes}, {max_classes}"
        )

    @st.composite
    def draw(data: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
        n = data(st.integers(1, max_batch))
        c = data(st.integers(min_classes, max_classes))
        extra = tuple(data(shapes(min_rank=0, max_rank=max_extra_dims, max_dim=4)))
        z = data(logits((n, c, *extra), dtype=dtype, bound=bound))
        t = data(class_targets(c, (n, *extra), ignore_index=ignore_index))
        return z, t

    return draw()


def keys() -> st.SearchStrategy[torch.Tensor]:
    """``fdl.random`` keys from arbitrary 63-bit seeds.

    Returns:
        A strategy of keys (int64 tensors of shape ``(2,)``).

    Example:
        >>> from hypothesis import given, settings
        >>> @settings(max_examples=5, deadline=None)
        ... @given(keys())
        ... def check(k):
        ...     assert k.shape == (2,)
        >>> check()
    """
    return st.integers(0, 2**63 - 1).map(fr.key)
