"""Normalisation layers: LayerNorm, GroupNorm, BatchNorm1d, BatchNorm2d.

Constructors, parameter names (``weight`` = ones, ``bias`` = zeros at init)
and buffer names (``running_mean``, ``running_var``, ``num_batches_tracked``)
are torch's. BatchNorm keeps its running statistics in an explicit state dict
that goes in and comes out::

    bn = fdl.nn.BatchNorm2d(8)
    params, state = bn.init(key), bn.init_state()
    y, state = bn.apply(params, x, state=state, train=True)   # batch statistics
    y, _ = bn.apply(params, x, state=state)                   # running statistics

Example:
    >>> import torch, fdl
    >>> bn = fdl.nn.BatchNorm1d(2)
    >>> y, state = bn.apply(bn.init(fdl.random.key(0)), torch.tensor([[1.0, 2.0], [3.0, 6.0]]),
    ...                     state=bn.init_state(), train=True)
    >>> state["running_mean"], int(state["num_batches_tracked"])
    (tensor([0.2000, 0.4000]), 1)
"""

from __future__ import annotations

from dataclasses import KW_ONLY
from typing import Any, ClassVar

import torch

from fdl.nn import _functional_norms as _F
from fdl.nn._base import Layer, Params, State, field
from fdl.nn._layer_utils import affine_norm_params, check_input, running_stats

__all__ = ["BatchNorm1d", "BatchNorm2d", "GroupNorm", "LayerNorm"]


def _positive_sizes(value: Any, layer: Layer) -> tuple[int, ...]:
    shape = (int(value),) if isinstance(value, int) else tuple(int(s) for s in value)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"must be positive sizes, got {shape}")
    return shape


class LayerNorm(Layer):
    """Layer normalisation over the trailing ``normalized_shape`` dimensions.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the mean and
    biased variance over the trailing dimensions (see
    :func:`fdl.nn.functional.layer_norm`). Input ``(*, *normalized_shape)``.

    Params: ``weight`` and ``bias`` of shape ``normalized_shape`` (ones and
    zeros); none without ``elementwise_affine``, no ``bias`` with ``bias=False``.

    Example:
        >>> import torch, fdl
        >>> ln = LayerNorm(2)
        >>> ln.apply(ln.init(fdl.random.key(0)), torch.tensor([[1.0, 3.0]]))
        tensor([[-1.0000,  1.0000]])
    """

    normalized_shape: tuple[int, ...] = field(converter=_positive_sizes)
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True
    device: Any = None
    dtype: Any = None

    def init(self, key: Any = None) -> Params:
        """``{"weight": ones, "bias": zeros}`` of shape ``normalized_shape`` (``key`` unused)."""
        return affine_norm_params(
            self.normalized_shape, self.elementwise_affine, self.bias, self.device, self.dtype
        )

    def apply(
        self, params: Params, x: torch.Tensor, *, key: Any = None, train: bool = False
    ) -> torch.Tensor:
        """Normalise ``x`` of shape ``(*, *normalized_shape)``; returns ``x``'s shape."""
        shape = self.normalized_shape
        text = f"(*, {', '.join(map(str, shape))})"
        check_input(self, x, (), text)
        if tuple(x.shape[-len(shape) :]) != shape:
            raise ValueError(f"LayerNorm: expected input of shape {text}, got {tuple(x.shape)}")
        return _F.layer_norm(x, shape, params.get("weight"), params.get("bias"), self.eps)


class GroupNorm(Layer):
    """Group normalisation: per-sample statistics over groups of channels.

    Input ``(N, C, *)`` with ``C = num_channels``; see
    :func:`fdl.nn.functional.group_norm`. Params: ``weight``/``bias`` of shape
    ``(num_channels,)`` when ``affine``.

    Example:
        >>> import torch, fdl
        >>> gn = GroupNorm(1, 2)
        >>> gn.apply(gn.init(fdl.random.key(0)), torch.tensor([[1.0, 3.0]]))
        tensor([[-1.0000,  1.0000]])
    """

    num_groups: int
    num_channels: int
    eps: float = 1e-5
    affine: bool = True
    device: Any = None
    dtype: Any = None
    _: KW_ONLY
    bias: bool = True

    def _check_fields(self) -> None:
        if self.num_groups <= 0 or self.num_channels % self.num_groups != 0:
            raise ValueError(
                f"GroupNorm: num_channels ({self.num_channels}) must be divisible by "
                f"num_groups ({self.num_groups})"
            )

    def init(self, key: Any = None) -> Params:
        """``{"weight": ones, "bias": zeros}`` of shape ``(num_channels,)`` (``key`` unused)."""
        return affine_norm_params(
            (self.num_channels,), self.affine, self.bias, self.device, self.dtype
        )

    def apply(
        self, params: Params, x: torch.Tensor, *, key: Any = None, train: bool = False
    ) -> torch.Tensor:
        """Normalise ``x`` of shape ``(N, num_channels, *)``; returns ``x``'s shape."""
        c = self.num_channels
        check_input(self, x, (), f"(N, {c}, *)", 1, c)
        return _F.group_norm(x, self.num_groups, params.get("weight"), params.get("bias"), self.eps)


class _RunningNorm(Layer):
    """Fields, checks, running state and its update, shared by the batch and instance norms."""

    stateful: ClassVar[bool] = True

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    device: Any = None
    dtype: Any = None

    def _check_fields(self) -> None:
        if self.num_features <= 0:
            raise ValueError(
                f"{type(self).__name__}: num_features must be positive, got {self.num_features}"
            )

    def init(self, key: Any = None) -> Params:
        """``{"weight": ones, "bias": zeros}`` of shape ``(num_features,)`` with ``affine``, else
        ``{}`` (no ``bias`` when BatchNorm's ``bias=False``; ``key`` unused)."""
        bias = getattr(self, "bias", True)  # the instance norms always have a shift
        return affine_norm_params((self.num_features,), self.affine, bias, self.device, self.dtype)

    def init_state(self) -> State:
        """``running_mean`` zeros, ``running_var`` ones, ``num_batches_tracked`` 0 (int64).

        ``{}`` when ``track_running_stats=False``.
        """
        return running_stats(self.num_features, self.track_running_stats, self.device, self.dtype)

    @staticmethod
    def _moving_average(
        state: State, f: Any, mean: torch.Tensor, var: torch.Tensor, tracked: torch.Tensor
    ) -> State:
        """``running = (1 - f) * running + f * new`` for ``mean`` and (unbiased) ``var``."""
        rm, rv = state["running_mean"], state["running_var"]
        return {
            "running_mean": (1 - f) * rm + f * mean.to(rm.dtype),
            "running_var": (1 - f) * rv + f * var.to(rv.dtype),
            "num_batches_tracked": tracked,
        }


class _BatchNorm(_RunningNorm):
    """``init`` and ``apply`` of BatchNorm1d/2d (see the module docstring for the protocol)."""

    _ranks: ClassVar[tuple[int, ...]] = ()
    _shape_text: ClassVar[str] = ""

    _: KW_ONLY
    bias: bool = True

    def apply(
        self,
        params: Params,
        x: torch.Tensor,
        *,
        state: State,
        key: Any = None,
        train: bool = False,
    ) -> tuple[torch.Tensor, State]:
        """Normalise ``x`` per channel; returns ``(y, new_state)``.

        ``train=True`` (or ``track_running_stats=False``): batch mean ``mu`` and
        biased variance ``var`` over every axis but the channel axis. When
        tracking in train mode, with ``n`` values per channel and
        ``f = momentum`` (``1 / num_batches_tracked`` after the increment when
        ``momentum is None``)::

            running_mean = (1 - f) * running_mean + f * mu
            running_var  = (1 - f) * running_var  + f * var * n / (n - 1)
            num_batches_tracked += 1

        ``train=False`` with tracking: normalise by the running statistics,
        state returned unchanged. Then
        ``y = (x - mu) / sqrt(var + eps) * weight + bias``
        (:func:`fdl.nn.functional.batch_norm`). The running statistics carry no
        gradient.

        Args:
            params: ``{"weight", "bias"}`` (or ``{}`` without ``affine``).
            x: input of the layer's shape (see the class docstring).
            state: ``init_state()`` or a previous ``new_state``.
            key: unused.
            train: batch statistics and running-stat update.

        Returns:
            ``(y, new_state)``; ``y`` has ``x``'s shape.
        """
        c = self.num_features
        check_input(self, x, self._ranks, self._shape_text.format(c=c), 1, c)
        weight, bias = params.get("weight"), params.get("bias")
        use_batch = train or not self.track_running_stats
        if not use_batch:
            mu, var = state["running_mean"], state["running_var"]
            return _F.batch_norm(x, mu, var, weight, bias, eps=self.eps), state
        mu, var, count = _F.batch_stats(x)
        if count <= 1:
            raise ValueError(
                f"{type(self).__name__}: expected more than 1 value per channel when training, "
                f"got input of shape {tuple(x.shape)}"
            )
        # normalised by this batch's statistics (the formula of batch_norm, given them)
        y = _F.batch_norm(x, mu, var, weight, bias, eps=self.eps)
        if not (train and self.track_running_stats):
            return y, state
        tracked = state["num_batches_tracked"] + 1
        rm_dtype = state["running_mean"].dtype
        f = 1.0 / tracked.to(rm_dtype) if self.momentum is None else self.momentum
        unbiased = var.detach() * (count / (count - 1))
        return y, self._moving_average(state, f, mu.detach(), unbiased, tracked)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of ``(N, C)`` or ``(N, C, L)`` input, ``C = num_features``.

    See :meth:`apply` for the formulas and the state update.

    Example:
        >>> import torch, fdl
        >>> bn = BatchNorm1d(3)
        >>> params, state = bn.init(fdl.random.key(0)), bn.init_state()
        >>> y, state = bn.apply(params, torch.randn(4, 3), state=state)
        >>> y.shape
        torch.Size([4, 3])
    """

    _ranks: ClassVar[tuple[int, ...]] = (2, 3)
    _shape_text: ClassVar[str] = "(N, {c}) or (N, {c}, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of ``(N, C, H, W)`` input, ``C = num_features``.

    See :meth:`apply` for the formulas and the state update.

    Example:
        >>> import torch, fdl
        >>> bn = BatchNorm2d(3)
        >>> y, state = bn.apply(bn.init(fdl.random.key(0)), torch.randn(2, 3, 4, 4),
        ...                     state=bn.init_state(), train=True)
        >>> sorted(state)
        ['num_batches_tracked', 'running_mean', 'running_var']
    """

    _ranks: ClassVar[tuple[int, ...]] = (4,)
    _shape_text: ClassVar[str] = "(N, {c}, H, W)"
