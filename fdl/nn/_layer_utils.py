"""Small helpers shared by the layers of ``fdl.nn``: converters, input checks, keys, norm init."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from fdl import _eager
from fdl import random as _random
from fdl.nn import init as _init
from fdl.nn._base import Converter, Layer


def _as_ints(value: Any, n: int) -> tuple[int, ...] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if isinstance(value, Sequence) and not isinstance(value, str):
        out = tuple(value)
        if len(out) == n and all(isinstance(v, int) and not isinstance(v, bool) for v in out):
            return out
    return None


def ntuple(value: Any, n: int, name: str, layer: str) -> tuple[int, ...]:
    """``3 -> (3, 3)``; a sequence must have length ``n`` (as torch's ``_pair``)."""
    out = _as_ints(value, n)
    if out is None:
        raise TypeError(f"{layer}: {name} must be an int or a tuple of {n} ints, got {value!r}")
    return out


def int_tuple(
    n: int | None = None, *, none_from: str | None = None, words: tuple[str, ...] = ()
) -> Converter:
    """Field converter: an int or ``n`` ints -> a tuple of ``n`` ints (torch's ``_ntuple``).

    ``n`` defaults to the layer's ``_n`` (its number of spatial dimensions, a
    class variable of the convolution and pooling layers). ``none_from`` names an
    earlier field whose value replaces ``None`` (pooling's ``stride=None`` means
    ``kernel_size``); ``words`` are strings kept as given
    (convolution's ``padding="same"``).
    """

    def convert(value: Any, layer: Any) -> Any:
        if value is None and none_from is not None:
            return getattr(layer, none_from)
        if isinstance(value, str):
            if value in words:
                return value
            allowed = ", ".join([*map(repr, words), "an int or tuple"])
            raise ValueError(f"must be {allowed}, got {value!r}")
        size = layer._n if n is None else n
        out = _as_ints(value, size)
        if out is None:
            raise TypeError(f"must be an int or a tuple of {size} ints, got {value!r}")
        return out

    return convert


def one_of(*allowed: str) -> Converter:
    """Field converter: a string from ``allowed``."""

    def convert(value: Any, layer: Layer) -> Any:
        if value not in allowed:
            raise ValueError(f"must be one of {allowed}, got {value!r}")
        return value

    return convert


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

    ``shape`` describes the expected shape for the message, e.g. ``"(N, 3, H, W)"``;
    a ``dim`` the input does not have fails the check (``ValueError``, not ``IndexError``).
    """
    name = type(layer).__name__
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: {arg} must be a tensor of shape {shape}, got {type(x).__name__}")
    ok = x.dim() in ranks if ranks else True
    if ok and dim is not None:
        ok = -x.dim() <= dim < x.dim() and (size is None or x.shape[dim] == size)
    if not ok:
        raise ValueError(f"{name}: expected {arg} of shape {shape}, got {tuple(x.shape)}")


def check_tensor(layer: Layer, x: Any) -> None:
    """Raise ``TypeError`` naming the layer if ``x`` is not a tensor (any shape accepted)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{type(layer).__name__}: input must be a tensor, got {type(x).__name__}")


def split_key(key: _random.Key, num: int = 2) -> _random.Key:
    """``fdl.random.split``, short-circuited on the meta device.

    ``param_shapes`` runs ``init`` on meta tensors; the key bits do not matter
    there and the cipher's few hundred meta ops would cost a noticeable time.
    """
    if key.device.type == "meta":
        return key.expand(num, *key.shape)
    return _random.split(key, num)


def check_params_fast(layer: Layer, params: Any) -> None:
    """``layer.check_params(params)``, eager only.

    Layers built on :class:`~fdl.nn.Layer` need not call it: the base checks
    ``apply``'s params at the outermost call. Kept for layers that check
    themselves.
    """
    if _eager.validating():
        layer.check_params(params)


def affine_init(
    key: _random.Key,
    weight_shape: tuple[int, ...],
    bias_size: int | None,
    *,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> dict[str, torch.Tensor]:
    """torch's ``reset_parameters`` of Linear and the convolutions.

    ``weight ~ kaiming_uniform(a=sqrt(5))``, i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
    and ``bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` of size ``bias_size``
    (no bias when ``None``), with ``fan_in`` from dimension 1 of the weight.
    """
    kw, kb = split_key(key)
    opts: dict[str, Any] = {"dtype": dtype, "device": device}
    params = {"weight": _init.kaiming_uniform(kw, weight_shape, a=math.sqrt(5), **opts)}
    if bias_size is not None:
        fan_in = _init.fans(weight_shape)[0]
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        params["bias"] = _init.uniform(kb, (bias_size,), -bound, bound, **opts)
    return params


def factory_kwargs(device: Any, dtype: Any) -> dict[str, Any]:
    """``device`` and ``dtype`` for ``torch.zeros``/``ones``; ``dtype=None``: the default float."""
    return {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}


def affine_norm_params(
    shape: tuple[int, ...], affine: bool, bias: bool, device: Any, dtype: Any
) -> dict[str, torch.Tensor]:
    """A norm's ``{"weight": ones, "bias": zeros}`` of ``shape`` (no bias unless ``bias``);
    ``{}`` unless ``affine``."""
    if not affine:
        return {}
    kw = factory_kwargs(device, dtype)
    params = {"weight": torch.ones(shape, **kw)}
    if bias:
        params["bias"] = torch.zeros(shape, **kw)
    return params


def running_stats(
    num_features: int, track: bool, device: Any, dtype: Any
) -> dict[str, torch.Tensor]:
    """``running_mean`` zeros, ``running_var`` ones, ``num_batches_tracked`` 0 (int64);
    ``{}`` unless ``track``."""
    if not track:
        return {}
    kw = factory_kwargs(device, dtype)
    return {
        "running_mean": torch.zeros(num_features, **kw),
        "running_var": torch.ones(num_features, **kw),
        "num_batches_tracked": torch.tensor(0, dtype=torch.long, device=device),
    }
