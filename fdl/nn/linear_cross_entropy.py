"""``LinearCrossEntropyLoss``: a projection to logits and the cross-entropy, as torch's."""

from __future__ import annotations

import math
from typing import Any

import torch

from fdl import _linear_cross_entropy as _lce  # a module: fdl.nn and it import each other
from fdl import random as _random
from fdl.nn._base import Layer, OptKey, Params, Tensor, field
from fdl.nn._layer_utils import affine_init

__all__ = ["LinearCrossEntropyLoss"]


def _sizes(value: Any, layer: Layer) -> tuple[int, ...]:
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise TypeError(f"must be a tuple of positive ints, got {value!r}")
    return tuple(value)


class LinearCrossEntropyLoss(Layer):
    r"""Cross-entropy of the logits ``input @ W^T + b``, as ``torch.nn.LinearCrossEntropyLoss``.

    Params (torch's ``state_dict`` keys): ``linear.weight``
    ``(num_classes * prod(out_features), in_features)`` and ``linear.bias``
    ``(num_classes * prod(out_features),)`` (with ``bias=True``), drawn as
    ``torch.nn.Linear`` draws them and stored flat, as torch stores them.
    ``apply`` reshapes them to ``(C, *out_features, in_features)`` and
    ``(C, *out_features)`` and returns
    :func:`fdl.losses.linear_cross_entropy` of the input and target.

    Shapes: ``apply(params, input, target)`` with ``input`` ``(N, in_features)`` or
    ``(in_features,)`` and ``target`` class indices ``(N, *out_features)``/``()`` or
    probabilities ``(N, C, *out_features)``/``(C,)``; returns the loss (per example
    for ``reduction='none'``).

    Differences from torch: the class ``weight`` (a buffer of torch's module, state_dict
    key ``weight``) is passed to ``apply`` as ``weight=``, not held by the layer; torch's
    ``options`` is replaced by ``chunk_size`` (see
    :func:`fdl.losses.linear_cross_entropy`).

    Args:
        in_features: size of each input sample.
        num_classes: number of classes ``C``.
        out_features: ``(d1, ..., dK)`` of a K-dimensional loss.
        bias: whether the projection has a bias.
        device: device of the initialised params.
        dtype: dtype of the initialised params.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        ignore_index: class-index target value that contributes nothing (``None``: -100).
        label_smoothing: in ``[0, 1]``.
        chunk_size: rows per chunk (``None``: the whole batch at once).

    Example:
        >>> import fdl, torch
        >>> layer = fdl.nn.LinearCrossEntropyLoss(4, 10, bias=True)
        >>> params = layer.init(fdl.random.key(0))
        >>> {k: tuple(v.shape) for k, v in params["linear"].items()}
        {'weight': (10, 4), 'bias': (10,)}
        >>> layer.apply(params, torch.zeros(3, 4), torch.tensor([0, 1, 2])).shape
        torch.Size([])
    """

    in_features: int
    num_classes: int
    out_features: tuple[int, ...] = field(default=(), converter=_sizes)
    bias: bool = False
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
    reduction: str = "mean"
    ignore_index: int | None = None
    label_smoothing: float = 0.0
    chunk_size: int | None = None

    def init(self, key: _random.Key) -> Params:
        """Draw ``linear.weight`` (and ``linear.bias``) as ``torch.nn.Linear`` does."""
        flat = math.prod(self.out_features, start=self.num_classes)
        bias = flat if self.bias else None
        linear = affine_init(
            key, (flat, self.in_features), bias, dtype=self.dtype, device=self.device
        )
        return {"linear": linear}

    def apply(
        self,
        params: Params,
        input: Tensor,
        target: Tensor,
        *,
        weight: Tensor | None = None,
        key: OptKey = None,
        train: bool = False,
    ) -> Tensor:
        """The loss of ``input`` against ``target`` (``weight``: optional class weights)."""
        lin = params["linear"]
        shape = (self.num_classes, *self.out_features)
        bias = lin.get("bias")
        return _lce.linear_cross_entropy(
            input,
            lin["weight"].reshape(*shape, self.in_features),  # (C * prod(d), in) -> (C, *d, in)
            target,
            linear_bias=None if bias is None else bias.reshape(shape),  # -> (C, *d)
            weight=weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            chunk_size=self.chunk_size,
        )
