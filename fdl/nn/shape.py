"""Reshaping layers: ``Flatten`` and ``Unflatten`` (no params)."""

from __future__ import annotations

import math
from typing import Any

from fdl.nn import _functional_layers as _F
from fdl.nn._base import Layer, OptKey, Params, Tensor, field
from fdl.nn._layer_utils import check_tensor

__all__ = ["Flatten", "Unflatten"]


class Flatten(Layer):
    """Merge dimensions ``start_dim..end_dim`` into one, as ``torch.nn.Flatten``.

    The default keeps the batch dimension: ``(N, C, H, W) -> (N, C * H * W)``.

    Example:
        >>> import fdl, torch
        >>> fdl.nn.Flatten().apply({}, torch.zeros(64, 64, 7, 7)).shape
        torch.Size([64, 3136])
    """

    start_dim: int = 1
    end_dim: int = -1

    def apply(
        self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """``(*, d_start, ..., d_end, *) -> (*, d_start * ... * d_end, *)``."""
        check_tensor(self, x)
        rank = max(x.dim(), 1)
        for d in (self.start_dim, self.end_dim):
            if not -rank <= d < rank:
                raise ValueError(
                    f"Flatten: start_dim={self.start_dim}, end_dim={self.end_dim} do not fit an "
                    f"input of shape {tuple(x.shape)}"
                )
        return _F.flatten(x, self.start_dim, self.end_dim)


def _int_sizes(value: Any, layer: Layer) -> tuple[int, ...]:
    if isinstance(value, int) or not all(isinstance(s, int) for s in value):
        raise TypeError(f"must be a tuple of ints, got {value!r}")
    return tuple(value)


class Unflatten(Layer):
    """Split dimension ``dim`` into ``unflattened_size``, as ``torch.nn.Unflatten``.

    Example:
        >>> import fdl, torch
        >>> fdl.nn.Unflatten(1, (2, 5)).apply({}, torch.zeros(3, 10)).shape
        torch.Size([3, 2, 5])
    """

    dim: int
    unflattened_size: tuple[int, ...] = field(converter=_int_sizes)

    def apply(
        self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """``(*, d, *) -> (*, *unflattened_size, *)`` where ``prod(unflattened_size) == d``."""
        check_tensor(self, x)
        known = [s for s in self.unflattened_size if s != -1]
        ok = -x.dim() <= self.dim < x.dim()
        if ok:
            n = x.shape[self.dim]
            ok = (
                n == math.prod(known)
                if len(known) == len(self.unflattened_size)
                else (math.prod(known) > 0 and n % math.prod(known) == 0)
            )
        if not ok:
            raise ValueError(
                f"Unflatten: expected input with a dimension {self.dim} that splits into "
                f"{self.unflattened_size}, got {tuple(x.shape)}"
            )
        return x.unflatten(self.dim, self.unflattened_size)
