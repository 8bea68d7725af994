"""Comparing pytrees of tensors with per-dtype tolerances and readable failures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fdl import tree as ft
from fdl._leaf import describe as _kind

__all__ = ["assert_trees_close", "default_tolerances"]

# (rtol, atol) per floating dtype: an element passes where
# |actual - expected| <= atol + rtol * |expected|.
_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}
_COMPLEX_TO_REAL = {
    torch.complex128: torch.float64,
    torch.complex64: torch.float32,
    torch.complex32: torch.float16,
}


def default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """The default ``(rtol, atol)`` that fdl's comparisons use for ``dtype``.

    ====================  ===========  ===========
    dtype                 rtol         atol
    ====================  ===========  ===========
    ``float64``           ``1e-10``    ``1e-12``
    ``float32``           ``1e-5``     ``1e-6``
    ``float16``           ``1e-3``     ``1e-5``
    ``bfloat16``          ``1.6e-2``   ``1e-5``
    complex               as the real dtype of the same width
    integer, bool         ``0``        ``0`` (exact)
    ====================  ===========  ===========

    Other floating dtypes (float8 variants) use the ``bfloat16`` row.

    Args:
        dtype: a torch dtype.

    Returns:
        ``(rtol, atol)``.

    Example:
        >>> import torch
        >>> default_tolerances(torch.float32)
        (1e-05, 1e-06)
        >>> default_tolerances(torch.int64)
        (0.0, 0.0)
    """
    dtype = _COMPLEX_TO_REAL.get(dtype, dtype)
    if dtype in _TOLERANCES:
        return _TOLERANCES[dtype]
    if dtype.is_floating_point:
        return _TOLERANCES[torch.bfloat16]
    return (0.0, 0.0)


def _resolve_tolerances(
    dtype: torch.dtype, rtol: float | None, atol: float | None
) -> tuple[float, float]:
    d_rtol, d_atol = default_tolerances(dtype)
    return (d_rtol if rtol is None else float(rtol), d_atol if atol is None else float(atol))


def _check_tolerance_args(rtol: float | None, atol: float | None) -> None:
    for name, v in (("rtol", rtol), ("atol", atol)):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a non-negative number or None, got {type(v).__name__}")
        if not v >= 0:
            raise ValueError(f"{name} must be a non-negative number or None, got {v}")


def _fmt_index(flat_idx: int, shape: Sequence[int]) -> str:
    if len(shape) == 0:
        return "()"
    idx = []
    for d in reversed(shape):
        idx.append(flat_idx % d)
        flat_idx //= d
    return str(tuple(reversed(idx)))


def _fmt_num(x: Any) -> str:
    return f"{x:.6g}" if isinstance(x, (float, complex)) else str(x)


def _fmt_pair(actual: Any, expected: Any) -> str:
    """``actual x, expected y`` with enough digits to tell the two apart."""
    a, e = _fmt_num(actual), _fmt_num(expected)
    if a == e and actual != expected:
        a, e = repr(actual), repr(expected)
    return f"actual {a}, expected {e}"


def _tensor_failure(
    a: torch.Tensor,
    e: torch.Tensor,
    *,
    rtol: float | None,
    atol: float | None,
    equal_nan: bool,
    check_dtype: bool,
) -> str | None:
    """None when the tensors are close, else a one-line description of how they differ."""
    if a.shape != e.shape:
        return f"shape {tuple(a.shape)} vs expected {tuple(e.shape)}"
    if check_dtype and a.dtype != e.dtype:
        return f"dtype {a.dtype} vs expected {e.dtype}"
    if a.is_sparse or e.is_sparse:
        a, e = a.to_dense(), e.to_dense()
    a = a.detach().cpu()
    e = e.detach().cpu()
    common = torch.promote_types(a.dtype, e.dtype)
    # tolerances come from the less precise of the two dtypes
    tol_dtype = a.dtype if _resolution(a.dtype) >= _resolution(e.dtype) else e.dtype
    r, t = _resolve_tolerances(tol_dtype, rtol, atol)
    n = a.numel()
    if n == 0 or (a.dtype == e.dtype and torch.equal(a, e)):  # fast path: identical
        return None
    if not (common.is_floating_point or common.is_complex):
        mismatch = a.to(common) != e.to(common)
        if not bool(mismatch.any()):
            return None
        diff = (a.to(torch.float64) - e.to(torch.float64)).abs().reshape(-1)
        rel = diff / e.to(torch.float64).abs().reshape(-1)
        return _describe(a, e, mismatch.reshape(-1), diff, rel, n, exact=True)
    wide = torch.complex128 if common.is_complex else torch.float64
    a64, e64 = a.to(wide).reshape(-1), e.to(wide).reshape(-1)
    a_nan, e_nan = torch.isnan(a64), torch.isnan(e64)
    if common.is_complex:
        a_nan = a_nan | torch.isnan(a64.imag)
        e_nan = e_nan | torch.isnan(e64.imag)
    both_finite = torch.isfinite(a64) & torch.isfinite(e64)
    diff = torch.where(both_finite, (a64 - e64).abs(), torch.zeros((), dtype=torch.float64))
    e_abs = e64.abs()
    close = both_finite & (diff <= t + r * e_abs)
    # infinities must match exactly; NaNs match NaNs when equal_nan
    inf_equal = ~both_finite & ~a_nan & ~e_nan & (a64 == e64)
    close = close | inf_equal
    if equal_nan:
        close = close | (a_nan & e_nan)
    mismatch = ~close
    if not bool(mismatch.any()):
        return None
    # non-finite disagreements have infinite error
    diff = torch.where(both_finite | inf_equal | (a_nan & e_nan), diff, math.inf)
    rel = torch.where(diff == 0, torch.zeros((), dtype=torch.float64), diff / e_abs)
    rel = torch.where(torch.isinf(diff), math.inf, rel)
    return _describe(a, e, mismatch, diff, rel, n, exact=False, rtol=r, atol=t)


def _resolution(dtype: torch.dtype) -> float:
    if dtype.is_floating_point or dtype.is_complex:
        return torch.finfo(_COMPLEX_TO_REAL.get(dtype, dtype)).eps
    return 0.0  # integers are exact


def _describe(
    a: torch.Tensor,
    e: torch.Tensor,
    mismatch: torch.Tensor,
    diff: torch.Tensor,
    rel: torch.Tensor,
    n: int,
    *,
    exact: bool,
    rtol: float = 0.0,
    atol: float = 0.0,
) -> str:
    shape = tuple(a.shape)
    af, ef = a.reshape(-1), e.reshape(-1)
    count = int(mismatch.sum())
    masked_diff = torch.where(mismatch, diff, -1.0)
    masked_rel = torch.where(mismatch, rel, -1.0)
    i_abs = int(torch.argmax(masked_diff))
    i_rel = int(torch.argmax(masked_rel))
    i_first = int(torch.nonzero(mismatch)[0, 0])
    kind = "exactly equal" if exact else f"close (rtol={rtol:g}, atol={atol:g})"
    return (
        f"{count} of {n} elements not {kind} ({100.0 * count / n:.3g}%); "
        f"max abs error {_fmt_num(float(diff[i_abs]))} at index {_fmt_index(i_abs, shape)} "
        f"({_fmt_pair(af[i_abs].item(), ef[i_abs].item())}); "
        f"max rel error {_fmt_num(float(rel[i_rel]))} at index {_fmt_index(i_rel, shape)}; "
        f"first mismatch at index {_fmt_index(i_first, shape)}"
    )


def _leaf_failure(
    a: Any,
    e: Any,
    *,
    rtol: float | None,
    atol: float | None,
    equal_nan: bool,
    check_dtype: bool,
) -> str | None:
    # numpy arrays are compared as tensors
    a = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
    e = torch.from_numpy(e) if isinstance(e, np.ndarray) else e
    a_t, e_t = isinstance(a, torch.Tensor), isinstance(e, torch.Tensor)
    if a_t and e_t:
        return _tensor_failure(
            a, e, rtol=rtol, atol=atol, equal_nan=equal_nan, check_dtype=check_dtype
        )
    if a_t or e_t:
        return f"{_kind(a)} vs expected {_kind(e)}"
    if isinstance(a, (int, float, complex)) and isinstance(e, (int, float, complex)):
        if (
            isinstance(a, bool)
            or isinstance(e, bool)
            or not (isinstance(a, (float, complex)) or isinstance(e, (float, complex)))
        ):
            return None if a == e else f"{a!r} vs expected {e!r}"
        # Python floats are float64
        return _tensor_failure(
            torch.tensor(a),
            torch.tensor(e),
            rtol=rtol,
            atol=atol,
            equal_nan=equal_nan,
            check_dtype=False,
        )
    try:
        same = bool(a == e)
    except Exception:  # noqa: BLE001 - objects whose == is not a truth value
        same = a is e
    return None if same else f"{a!r} vs expected {e!r}"


def _tree_failures(
    actual: Any,
    expected: Any,
    *,
    rtol: float | None,
    atol: float | None,
    equal_nan: bool = True,
    check_dtype: bool = True,
) -> tuple[str | None, list[tuple[str, str]], int]:
    """(structure failure, [(path, leaf failure)], number of leaves)."""
    diff = ft.first_difference(actual, expected)
    if diff is None and ft.structure(actual) != ft.structure(expected):
        diff = ("<root>", f"{ft.structure(actual)} vs {ft.structure(expected)}")
    if diff is not None:
        return f"tree structures differ at '{diff[0]}': {diff[1]}", [], 0
    paths, a_leaves, _ = ft.flatten_with_paths(actual)
    e_leaves = ft.leaves(expected)
    failures = []
    for p, a, e in zip(paths, a_leaves, e_leaves, strict=True):
        why = _leaf_failure(
            a, e, rtol=rtol, atol=atol, equal_nan=equal_nan, check_dtype=check_dtype
        )
        if why is not None:
            failures.append((p or "<root>", why))
    return None, failures, len(a_leaves)


def _format_failures(
    header: str, structure: str | None, failures: list[tuple[str, str]], n_leaves: int
) -> str:
    if structure is not None:
        return f"{header}: {structure}"
    lines = [f"{header}: {len(failures)} of {n_leaves} leaves differ"]
    lines += [f"  '{p}': {why}" for p, why in failures]
    return "\n".join(lines)


def assert_trees_close(
    actual: Any,
    expected: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    equal_nan: bool = True,
    check_dtype: bool = True,
    msg: str | None = None,
) -> None:
    r"""Assert that two pytrees have one structure and every leaf pair is close.

    Checks, in order: the tree structure (a mismatch names the first differing
    path), then each leaf's kind, shape and dtype, then its values. A tensor
    leaf passes where, elementwise,

    .. math:: |actual - expected| \le atol + rtol \cdot |expected|

    with ``rtol``/``atol`` defaulting per dtype (see :func:`default_tolerances`):
    float64 ``(1e-10, 1e-12)``, float32 ``(1e-5, 1e-6)``, float16
    ``(1e-3, 1e-5)``, bfloat16 ``(1.6e-2, 1e-5)``; integer and bool leaves must
    be equal. Infinities must match exactly (same sign); NaNs in the same
    places count as equal (``equal_nan=True``). Non-tensor leaves are compared
    with ``==`` (Python floats as float64 tensors).

    The failure message lists every failing leaf with its path, the number of
    mismatched elements, the maximum absolute error and where it occurs (with
    both values there), the maximum relative error and where it occurs, and
    the first mismatched index.

    Args:
        actual: the pytree under test.
        expected: the reference pytree.
        rtol: relative tolerance; ``None`` for the dtype's default.
        atol: absolute tolerance; ``None`` for the dtype's default.
        equal_nan: NaNs in the same places count as equal.
        check_dtype: fail when leaf dtypes differ. With ``False`` leaves are
            compared in their promoted dtype with the tolerances of the less
            precise one.
        msg: text put before the report in the failure message.

    Returns:
        None.

    Raises:
        AssertionError: when the trees differ, with a report as above.

    Note:
        Unlike :func:`torch.testing.assert_close`, NaNs are equal by default,
        the float64 defaults are much tighter (formulas written out in float64
        should agree to about ``1e-10``), and every failing leaf is reported,
        not just the first.

    Example:
        >>> import torch
        >>> a = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
        >>> assert_trees_close(a, {"w": torch.ones(2, 3), "b": torch.zeros(3)})
        >>> bad = {"w": torch.ones(2, 3), "b": torch.tensor([0.0, 0.5, 0.0])}
        >>> assert_trees_close(a, bad)
        Traceback (most recent call last):
        ...
        AssertionError: trees not close: 1 of 2 leaves differ
          'b': 1 of 3 elements not close (rtol=1e-05, atol=1e-06) (33.3%); max abs error 0.5 ...
    """
    _check_tolerance_args(rtol, atol)
    structure, failures, n = _tree_failures(
        actual, expected, rtol=rtol, atol=atol, equal_nan=equal_nan, check_dtype=check_dtype
    )
    if structure is None and not failures:
        return
    header = "trees not close" if msg is None else f"{msg}: trees not close"
    raise AssertionError(_format_failures(header, structure, failures, n))
