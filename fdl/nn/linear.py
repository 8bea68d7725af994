"""Linear layers: ``Linear``, ``Bilinear`` and ``Identity``."""

from __future__ import annotations

import math
from typing import Any

import torch

from fdl import random as _random
from fdl.nn import _functional_layers as _F
from fdl.nn import init as _init
from fdl.nn._base import Layer, OptKey, Params, Tensor
from fdl.nn._layer_utils import affine_init, check_input, split_key

__all__ = ["Bilinear", "Identity", "Linear"]


class Linear(Layer):
    r"""Affine map :math:`y = x W^\top + b`, as ``torch.nn.Linear``.

    Params: ``weight`` ``(out_features, in_features)`` drawn from
    :math:`\mathcal{U}(-k, k)` with :math:`k = 1/\sqrt{\text{in\_features}}`
    (``kaiming_uniform`` with ``a = sqrt(5)``), and ``bias`` ``(out_features,)``
    from the same range (absent when ``bias=False``).

    Shapes: input ``(*, in_features)`` -> output ``(*, out_features)``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: whether to learn an additive bias.
        device: device of the initialised params.
        dtype: dtype of the initialised params.

    Example:
        >>> import fdl, torch
        >>> layer = fdl.nn.Linear(784, 128)
        >>> params = layer.init(fdl.random.key(0))
        >>> {k: tuple(v.shape) for k, v in params.items()}
        {'weight': (128, 784), 'bias': (128,)}
        >>> layer.apply(params, torch.zeros(64, 784)).shape
        torch.Size([64, 128])
    """

    in_features: int
    out_features: int
    bias: bool = True
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None

    def init(self, key: _random.Key) -> Params:
        """Draw ``weight`` (and ``bias``) with torch's default distribution."""
        shape = (self.out_features, self.in_features)
        bias = self.out_features if self.bias else None
        return affine_init(key, shape, bias, dtype=self.dtype, device=self.device)

    def apply(
        self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """``(*, in_features) -> (*, out_features)``."""
        check_input(self, x, (), f"(*, {self.in_features})", -1, self.in_features)
        return _F.linear(x, params["weight"], params.get("bias"))


class Bilinear(Layer):
    r"""Bilinear map :math:`y_k = x_1^\top W_k x_2 + b_k`, as ``torch.nn.Bilinear``.

    Params: ``weight`` ``(out_features, in1_features, in2_features)`` and
    ``bias`` ``(out_features,)``, both from :math:`\mathcal{U}(-k, k)` with
    :math:`k = 1/\sqrt{\text{in1\_features}}`.

    Shapes: ``apply(params, x1, x2)`` with ``x1`` ``(*, in1_features)`` and
    ``x2`` ``(*, in2_features)`` -> ``(*, out_features)``.

    Args:
        in1_features: size of each first input sample.
        in2_features: size of each second input sample.
        out_features, bias, device, dtype: as in :class:`Linear`.

    Example:
        >>> import fdl, torch
        >>> layer = fdl.nn.Bilinear(2, 3, 4)
        >>> params = layer.init(fdl.random.key(0))
        >>> layer.apply(params, torch.ones(5, 2), torch.ones(5, 3)).shape
        torch.Size([5, 4])
    """

    in1_features: int
    in2_features: int
    out_features: int
    bias: bool = True
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None

    def init(self, key: _random.Key) -> Params:
        """Draw ``weight`` (and ``bias``) from ``U(-1/sqrt(in1), 1/sqrt(in1))``."""
        kw, kb = split_key(key)
        bound = 1.0 / math.sqrt(self.in1_features) if self.in1_features > 0 else 0.0
        opts: dict[str, Any] = {"dtype": self.dtype, "device": self.device}
        shape = (self.out_features, self.in1_features, self.in2_features)
        params = {"weight": _init.uniform(kw, shape, -bound, bound, **opts)}
        if self.bias:
            params["bias"] = _init.uniform(kb, (self.out_features,), -bound, bound, **opts)
        return params

    def apply(
        self, params: Params, x1: Tensor, x2: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """``(*, in1_features), (*, in2_features) -> (*, out_features)``."""
        check_input(self, x1, (), f"(*, {self.in1_features})", -1, self.in1_features, "input1")
        check_input(self, x2, (), f"(*, {self.in2_features})", -1, self.in2_features, "input2")
        if x1.shape[:-1] != x2.shape[:-1]:
            raise ValueError(
                "Bilinear: input1 and input2 must share their leading dimensions, got "
                f"{tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        return _F.bilinear(x1, x2, params["weight"], params.get("bias"))


class Identity(Layer):
    """Returns its input, as ``torch.nn.Identity`` (which also ignores its arguments).

    Example:
        >>> import fdl, torch
        >>> fdl.nn.Identity().apply({}, torch.ones(2))
        tensor([1., 1.])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __repr__(self) -> str:
        return "Identity()"

    def __eq__(self, other: object) -> bool:
        return type(other) is Identity

    def __hash__(self) -> int:
        return hash(Identity)

    def apply(
        self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """Return ``x``."""
        return x
