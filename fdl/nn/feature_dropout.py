"""``Dropout1d/2d/3d``, ``AlphaDropout`` and ``FeatureAlphaDropout`` with explicit keys.

``apply(params, x, key=k, train=True)`` draws the mask from ``key``; ``train=False`` is the
identity. Formulas in :mod:`fdl.nn._functional_feature_dropout`.

Example:
    >>> import torch, fdl
    >>> fdl.nn.Dropout2d(0.5).apply({}, torch.ones(1, 2, 2, 2)).sum().item()
    8.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from fdl.nn import _functional_feature_dropout as _F
from fdl.nn._base import OptKey, Params, Tensor
from fdl.nn.dropout import _DropoutRate

__all__ = ["AlphaDropout", "Dropout1d", "Dropout2d", "Dropout3d", "FeatureAlphaDropout"]


class _KeyedDropout(_DropoutRate):
    """The keyed dropout layers' apply; ``fn`` is the functional form (fields: ``_DropoutRate``)."""

    fn: ClassVar[Callable[..., torch.Tensor]]

    def apply(
        self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """Same shape in and out; ``key`` required when ``train=True`` and ``0 < p < 1``."""
        return type(self).fn(x, self.p, train, key=key)


@dataclass(frozen=True)
class Dropout1d(_KeyedDropout):
    """Zero whole channels of ``(N, C, L)`` / ``(C, L)`` with probability ``p``."""

    fn = staticmethod(_F.dropout1d)


@dataclass(frozen=True)
class Dropout2d(_KeyedDropout):
    """Zero whole channels of ``(N, C, H, W)`` / ``(C, H, W)`` with probability ``p``."""

    fn = staticmethod(_F.dropout2d)


@dataclass(frozen=True)
class Dropout3d(_KeyedDropout):
    """Zero whole channels of ``(N, C, D, H, W)`` / ``(C, D, H, W)`` with probability ``p``."""

    fn = staticmethod(_F.dropout3d)


@dataclass(frozen=True)
class AlphaDropout(_KeyedDropout):
    """Alpha dropout (keeps SELU's mean and variance), one draw per element."""

    fn = staticmethod(_F.alpha_dropout)


@dataclass(frozen=True)
class FeatureAlphaDropout(_KeyedDropout):
    """Alpha dropout with one draw per channel of ``(N, C, *)``."""

    fn = staticmethod(_F.feature_alpha_dropout)
