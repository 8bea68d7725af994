"""``Dropout1d/2d/3d``, ``AlphaDropout`` and ``FeatureAlphaDropout`` with explicit keys.

``apply(params, x, key=k, train=True)`` draws the mask from ``key``; ``train=False`` is the
identity. Formulas in :mod:`fdl.nn._functional_feature_dropout`.

Example:
    >>> import torch, fdl
    >>> fdl.nn.Dropout2d(0.5).apply({}, torch.ones(1, 2, 2, 2)).sum().item()
    8.0
"""

from __future__ import annotations

from fdl.nn import _functional_feature_dropout as _F
from fdl.nn._base import OptKey, Params, Tensor
from fdl.nn._fn_layer import _FnLayer
from fdl.nn.dropout import _DropoutRate

__all__ = ["AlphaDropout", "Dropout1d", "Dropout2d", "Dropout3d", "FeatureAlphaDropout"]


class _KeyedDropout(_DropoutRate, _FnLayer):
    """The keyed dropout layers' apply; ``fn`` (a class keyword) is the functional form."""

    def apply(
        self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """Same shape in and out; ``key`` required when ``train=True`` and ``0 < p < 1``."""
        return self._fn(x, **self._kwargs(), training=train, key=key)


class Dropout1d(_KeyedDropout, fn=_F.dropout1d):
    """Zero whole channels of ``(N, C, L)`` / ``(C, L)`` with probability ``p``."""


class Dropout2d(_KeyedDropout, fn=_F.dropout2d):
    """Zero whole channels of ``(N, C, H, W)`` / ``(C, H, W)`` with probability ``p``."""


class Dropout3d(_KeyedDropout, fn=_F.dropout3d):
    """Zero whole channels of ``(N, C, D, H, W)`` / ``(C, D, H, W)`` with probability ``p``."""


class AlphaDropout(_KeyedDropout, fn=_F.alpha_dropout):
    """Alpha dropout (keeps SELU's mean and variance), one draw per element."""


class FeatureAlphaDropout(_KeyedDropout, fn=_F.feature_alpha_dropout):
    """Alpha dropout with one draw per channel of ``(N, C, *)``."""
