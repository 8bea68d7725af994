"""Shared plumbing: the floating-point tensor inputs of a call, and fixed cotangents."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from fdl import random as fr
from fdl import tree as ft


def _is_float_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


class FloatInputs:
    """The floating-point tensor leaves of a tuple of positional arguments.

    ``paths[i]`` names leaf ``i`` as ``args[k].a.b``; :meth:`rebuild` puts new
    leaves back into copies of the arguments (other leaves kept as they are).
    """

    def __init__(self, args: tuple) -> None:
        self._treedefs = []
        self._leaves: list[list[Any]] = []
        self.paths: list[str] = []
        self.slots: list[tuple[int, int]] = []  # (argument, leaf index) of each float leaf
        self.tensors: list[torch.Tensor] = []
        for k, a in enumerate(args):
            ps, lvs, treedef = ft.flatten_with_paths(a)
            self._treedefs.append(treedef)
            self._leaves.append(lvs)
            for j, (p, x) in enumerate(zip(ps, lvs, strict=True)):
                if _is_float_tensor(x):
                    self.paths.append(f"args[{k}]" + (f".{p}" if p else ""))
                    self.slots.append((k, j))
                    self.tensors.append(x)

    def rebuild(self, new: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> tuple:
        """The arguments with the floating leaves replaced by ``new`` (in order)."""
        lvs = [list(x) for x in self._leaves]
        for (k, j), x in zip(self.slots, new, strict=True):
            lvs[k][j] = x
        return tuple(ft.unflatten(td, lv) for td, lv in zip(self._treedefs, lvs, strict=True))

    def copies(self) -> tuple:
        """The arguments with every tensor leaf replaced by a detached copy."""
        lvs = [
            [x.detach().clone() if isinstance(x, torch.Tensor) else x for x in leaves]
            for leaves in self._leaves
        ]
        return tuple(ft.unflatten(td, lv) for td, lv in zip(self._treedefs, lvs, strict=True))

    def as_dict(self, values: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> dict[str, Any]:
        """``{path: value}`` for reports."""
        return dict(zip(self.paths, values, strict=True))


def cotangents(out: Any, seed: int) -> list[torch.Tensor | None]:
    """A fixed standard-normal tensor per floating leaf of ``out`` (``None`` elsewhere)."""
    base = fr.key(seed)
    cts: list[torch.Tensor | None] = []
    for i, o in enumerate(ft.leaves(out)):
        if _is_float_tensor(o):
            ct = fr.normal(fr.fold_in(base, i), tuple(o.shape), dtype=torch.float64)
            cts.append(ct.to(o.dtype))
        else:
            cts.append(None)
    return cts


def weighted_sum(out: Any, cts: list[torch.Tensor | None]) -> torch.Tensor:
    """``sum_i sum(out_i * ct_i)`` over the floating leaves of ``out``."""
    terms = [(o * ct).sum() for o, ct in zip(ft.leaves(out), cts, strict=True) if ct is not None]
    if not terms:
        raise TypeError("the function returned no floating-point tensor to differentiate")
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def fn_name(fn: Callable[..., Any], default: str) -> str:
    """A function's name for reports (``functools.partial`` looks through)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", default)
    return default if name == "<lambda>" else name
