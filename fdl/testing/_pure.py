"""Checking that a function leaves its tensor inputs untouched."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fdl import tree as ft

__all__ = ["assert_pure"]


def _version(x: torch.Tensor) -> int | None:
    try:
        return x._version
    except RuntimeError:  # inference tensors carry no version counter
        return None


def _snapshot(x: torch.Tensor) -> tuple[Any, ...]:
    data = x.detach()
    if data.is_sparse:
        data = data.to_dense()
    return (
        _version(x),
        tuple(x.shape),
        tuple(x.stride()) if not x.is_sparse else None,
        x.dtype,
        x.requires_grad,
        data.clone(),
    )


def _same_values(before: torch.Tensor, after: torch.Tensor) -> bool:
    if before.shape != after.shape or before.dtype != after.dtype:
        return False
    if torch.equal(before, after):
        return True
    if before.is_floating_point() or before.is_complex():
        return bool(((before == after) | (before.isnan() & after.isnan())).all())
    return False


def _max_change(before: torch.Tensor, after: torch.Tensor) -> float:
    wide = torch.complex128 if before.is_complex() else torch.float64
    change = (after.to(wide) - before.to(wide)).abs()
    return float(change.nan_to_num(nan=float("inf")).max())


def _tensor_leaves(args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    out = []
    for i, a in enumerate(args):
        ps, lvs, _ = ft.flatten_with_paths(a)
        out += [(f"args[{i}]" + (f".{p}" if p else ""), x) for p, x in zip(ps, lvs, strict=True)]
    for k, a in kwargs.items():
        ps, lvs, _ = ft.flatten_with_paths(a)
        out += [(f"{k}" + (f".{p}" if p else ""), x) for p, x in zip(ps, lvs, strict=True)]
    return [(p, x) for p, x in out if isinstance(x, torch.Tensor)]


def assert_pure(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` and assert it modified no tensor input in place.

    Every tensor leaf of ``args`` and ``kwargs`` (nested in dicts, lists,
    tuples and NamedTuples) is recorded before the call: its version counter
    (``x._version``, bumped by every in-place op), shape, strides, dtype,
    ``requires_grad`` flag and a copy of its values. After the call any change
    fails, naming each modified input by path (``args[0].fc.weight``,
    ``state.mu.w``) and what changed. NaNs in the same places count as equal
    values. A version bump with equal values (``x.add_(0)``) still fails: it
    is an in-place write.

    Args:
        fn: the function under test.
        *args: positional arguments for ``fn``.
        **kwargs: keyword arguments for ``fn``.

    Returns:
        Whatever ``fn`` returns.

    Raises:
        AssertionError: when an input tensor was written to or altered.

    Example:
        >>> import torch
        >>> x = {"w": torch.ones(3)}
        >>> assert_pure(lambda t: t["w"] * 2, x)
        tensor([2., 2., 2.])
        >>> assert_pure(lambda t: t["w"].mul_(2), x)
        Traceback (most recent call last):
        ...
        AssertionError: fn modified 1 input tensor in place:
          args[0].w: written in place (version 0 -> 1); values changed (max abs change 1)
    """
    leaves = _tensor_leaves(args, kwargs)
    before = [_snapshot(x) for _, x in leaves]
    result = fn(*args, **kwargs)
    problems = []
    for (path, x), (ver, shape, stride, dtype, req, values) in zip(leaves, before, strict=True):
        why = []
        now_ver = _version(x)
        if ver is not None and now_ver is not None and now_ver != ver:
            why.append(f"written in place (version {ver} -> {now_ver})")
        if tuple(x.shape) != shape:
            why.append(f"shape changed {shape} -> {tuple(x.shape)}")
        elif stride is not None and not x.is_sparse and tuple(x.stride()) != stride:
            why.append(f"strides changed {stride} -> {tuple(x.stride())}")
        if x.dtype != dtype:
            why.append(f"dtype changed {dtype} -> {x.dtype}")
        if x.requires_grad != req:
            why.append(f"requires_grad changed {req} -> {x.requires_grad}")
        if tuple(x.shape) == shape and x.dtype == dtype:
            now = x.detach()
            now = now.to_dense() if now.is_sparse else now
            if not _same_values(values, now):
                why.append(f"values changed (max abs change {_max_change(values, now):.6g})")
        if why:
            problems.append(f"  {path}: " + "; ".join(why))
    if problems:
        name = getattr(fn, "__name__", "fn")
        name = "fn" if name == "<lambda>" else name
        s = "" if len(problems) == 1 else "s"
        raise AssertionError(
            f"{name} modified {len(problems)} input tensor{s} in place:\n" + "\n".join(problems)
        )
    return result
