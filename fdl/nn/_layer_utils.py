"""Small helpers shared by the layers of ``fdl.nn`` (argument normalisation, input checks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fdl import random as _random
from fdl.nn._base import Layer


def ntuple(value: Any, n: int, name: str, layer: str) -> tuple[int, ...]:
    """``3 -> (3, 3)``; a sequence must have length ``n`` (as torch's ``_pair``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, Sequence) and not isinstance(value, str):
        out = tuple(value)
        if len(out) == n and all(isinstance(v, int) and not isinstance(v, bool) for v in out):
            return out
    raise TypeError(f"{layer}: {name} must be an int or a tuple of {n} ints, got {value!r}")


def check_input(
    layer: Layer,
    x: Any,
    ranks: tuple[int, ...],
    shape: str,
    dim: int | None = None,
    size: int | None = None,
    arg: str = "input",
) -> None:
    """Raise if ``x`` is not a tensor of one of ``ranks`` with ``x.shape[dim] == size``.

    ``shape`` describes the expected shape for the message, e.g. ``"(N, 3, H, W)"``.
    """
    name = type(layer).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: {arg} must be a tensor of shape {shape}, got {type(x).__name__}")
    ok = x.dim() in ranks if ranks else True
    if ok and dim is not None and size is not None:
        ok = x.shape[dim] == size
    if not ok:
        raise ValueError(f"{name}: expected {arg} of shape {shape}, got {tuple(x.shape)}")


def split_key(key: _random.Key, num: int = 2) -> _random.Key:
    """``fdl.random.split``, short-circuited on the meta device.

    ``param_shapes`` runs ``init`` on meta tensors; the key bits do not matter
    there and the cipher's few hundred meta ops would cost a noticeable time.
    """
    if key.device.type == "meta":
        return key.expand(num, *key.shape)
    return _random.split(key, num)


def check_params_fast(layer: Layer, params: Any) -> None:
    """``layer.check_params(params)``, skipped while ``torch.compile`` traces.

    Shapes are static while tracing and the kernels check them anyway; the
    eager path gives the readable error.
    """
    if not torch.compiler.is_compiling():
        layer.check_params(params)
