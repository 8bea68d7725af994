"""Channel-wise and self-normalising dropout with explicit keys.

``dropout1d/2d/3d`` zero whole channels: one Bernoulli draw per ``(n, c)``, broadcast over
the spatial dimensions, survivors scaled by ``1 / (1 - p)``. ``alpha_dropout`` and
``feature_alpha_dropout`` (Klambauer et al., 2017) keep a SELU network's mean and variance:
with ``m ~ Bernoulli(1 - p)`` (per element, or per channel for the feature variant),
``alpha' = 1.7580993408473766`` (``-scale * alpha`` of SELU) and
``a = 1 / sqrt((alpha'**2 p + 1)(1 - p))``,

``y = a * m * x + a * alpha' * (p - (1 - m))``

(a dropped unit becomes ``a * alpha' * (p - 1)``, ``-alpha' * a`` shifted so that the mean is
kept). Masks come from ``key``, never from a global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fdl import random as _random
from fdl.nn._functional_named import named

__all__ = ["alpha_dropout", "dropout1d", "dropout2d", "dropout3d", "feature_alpha_dropout"]

Tensor = torch.Tensor
_ALPHA = 1.7580993408473766


def _check(name: str, input: object, p: float, inplace: bool) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
    if inplace:
        raise ValueError(f"{name}: inplace=True is not supported; fdl never mutates its input")


def _keep(key: _random.Key | None, p: float, shape: tuple[int, ...], name: str) -> torch.Tensor:
    if key is None:
        raise ValueError(f"{name} with training=True needs key=... (an fdl.random key)")
    return _random.bernoulli(key, 1.0 - p, shape)


def _channel_shape(name: str, spatial: int) -> Callable[[Tensor], tuple[int, ...]]:
    """One draw per channel: ``(N, C, 1, ..., 1)`` (or ``(C, 1, ...)`` unbatched)."""

    def shape(input: Tensor) -> tuple[int, ...]:
        if input.dim() not in (spatial + 1, spatial + 2):
            raise ValueError(
                f"{name}: expected a {spatial + 1}-d or {spatial + 2}-d input, "
                f"got {tuple(input.shape)}"
            )
        lead = input.dim() - spatial
        return (*input.shape[:lead], *([1] * spatial))

    return shape


def _element_shape(input: Tensor) -> tuple[int, ...]:
    return tuple(input.shape)


def _feature_shape(input: Tensor) -> tuple[int, ...]:
    return (*input.shape[:2], *([1] * (input.dim() - 2)))  # (N, C, 1, ...)


def _inverted(input: Tensor, p: float, keep: Tensor) -> Tensor:
    """Survivors scaled by ``1 / (1 - p)``."""
    return input * keep.to(device=input.device, dtype=input.dtype) * (1.0 / (1.0 - p))


def _alpha(input: Tensor, p: float, keep: Tensor) -> Tensor:
    a = 1.0 / math.sqrt((_ALPHA * _ALPHA * p + 1) * (1 - p))
    m = keep.to(device=input.device, dtype=input.dtype)
    return input * (m * a) + (m - 1) * (_ALPHA * a) + _ALPHA * a * p


def _dropout_fn(
    name: str,
    training_default: bool,
    mask_shape: Callable[[Tensor], tuple[int, ...]],
    drop: Callable[[Tensor, float, Tensor], Tensor],
    doc: str,
) -> Callable[..., Tensor]:
    """The public ``name``: masks of ``mask_shape(input)`` from ``key``, applied by ``drop``."""

    def dropout(
        input: Tensor,
        p: float = 0.5,
        training: bool = training_default,
        inplace: bool = False,
        *,
        key: _random.Key | None = None,
    ) -> Tensor:
        _check(name, input, p, inplace)
        shape = mask_shape(input)  # also checks the input's rank, training or not
        if not training or p == 0.0:
            return input
        if p == 1.0:
            return input * 0.0
        return drop(input, p, _keep(key, p, shape, name))

    return named(dropout, name, doc)


dropout1d = _dropout_fn(
    "dropout1d",
    True,
    _channel_shape("dropout1d", 1),
    _inverted,
    """Zero whole channels of ``(N, C, L)`` / ``(C, L)``; see the module docstring.

    Example:
        >>> import torch, fdl
        >>> y = dropout1d(torch.ones(1, 64, 3), key=fdl.random.key(0))
        >>> bool(((y == 0).all(-1) | (y == 2).all(-1)).all())
        True
    """,
)

dropout2d = _dropout_fn(
    "dropout2d",
    True,
    _channel_shape("dropout2d", 2),
    _inverted,
    """Zero whole channels of ``(N, C, H, W)`` / ``(C, H, W)``.

    Note:
        torch treats a 3-d input to ``dropout2d`` as batched 1-d data (with a warning); fdl
        treats it as one unbatched ``(C, H, W)`` sample, as ``nn.Dropout2d``'s documentation
        describes.

    Example:
        >>> import torch, fdl
        >>> dropout2d(torch.ones(1, 2, 2, 2), training=False).sum().item()
        8.0
    """,
)

dropout3d = _dropout_fn(
    "dropout3d",
    True,
    _channel_shape("dropout3d", 3),
    _inverted,
    """Zero whole channels of ``(N, C, D, H, W)`` / ``(C, D, H, W)``.

    Example:
        >>> import torch, fdl
        >>> dropout3d(torch.ones(1, 2, 1, 2, 2), p=0.0, key=fdl.random.key(0)).sum().item()
        8.0
    """,
)

alpha_dropout = _dropout_fn(
    "alpha_dropout",
    False,
    _element_shape,
    _alpha,
    """Alpha dropout, one draw per element; the identity unless ``training``.

    Example:
        >>> import torch, fdl
        >>> x = torch.randn(100000, generator=torch.Generator().manual_seed(0))
        >>> y = alpha_dropout(x, 0.2, training=True, key=fdl.random.key(0))
        >>> round(y.mean().item(), 1), round(y.std().item(), 1)
        (0.0, 1.0)
    """,
)

feature_alpha_dropout = _dropout_fn(
    "feature_alpha_dropout",
    False,
    _feature_shape,
    _alpha,
    """Alpha dropout with one draw per channel of ``(N, C, *)`` (every dim from 2 on shares it).

    Example:
        >>> import torch, fdl
        >>> feature_alpha_dropout(torch.ones(2, 3, 4), 0.5).sum().item()
        24.0
    """,
)
