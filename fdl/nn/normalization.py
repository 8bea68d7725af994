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

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar, cast

import torch

from fdl import tree as _tree
from fdl.nn import _functional_activations as _F
from fdl.nn._base import Layer, Params, State

__all__ = ["BatchNorm1d", "BatchNorm2d", "GroupNorm", "LayerNorm"]


def _factory(device: Any, dtype: Any) -> dict[str, Any]:
    return {"device": device, "dtype": dtype if dtype is not None else torch.get_default_dtype()}


def _affine_params(
    shape: tuple[int, ...], affine: bool, bias: bool, device: Any, dtype: Any
) -> Params:
    if not affine:
        return {}
    kw = _factory(device, dtype)
    params = {"weight": torch.ones(shape, **kw)}
    if bias:
        params["bias"] = torch.zeros(shape, **kw)
    return params


def _validate_params(layer: Layer, params: Params) -> None:
    # eager only: dynamo cannot trace optree, and a traced graph is guarded on these shapes
    if not torch.compiler.is_compiling():
        layer.check_params(params)


def _check_input(name: str, x: Any, ok: bool, expected: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor input, got {type(x).__name__}")
    if not ok:
        raise ValueError(f"{name}: expected input of shape {expected}, got {tuple(x.shape)}")


@dataclass(frozen=True)
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

    normalized_shape: int | Sequence[int]
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True
    device: Any = None
    dtype: Any = None

    def __post_init__(self) -> None:
        shape = self.normalized_shape
        shape = (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"LayerNorm: normalized_shape must be positive sizes, got {shape}")
        object.__setattr__(self, "normalized_shape", shape)

    @property
    def _shape(self) -> tuple[int, ...]:
        return cast(tuple[int, ...], self.normalized_shape)  # a tuple after __post_init__

    def init(self, key: Any = None) -> Params:
        """``{"weight": ones, "bias": zeros}`` of shape ``normalized_shape`` (``key`` unused)."""
        return _affine_params(
            self._shape, self.elementwise_affine, self.bias, self.device, self.dtype
        )

    def apply(
        self, params: Params, x: torch.Tensor, *, key: Any = None, train: bool = False
    ) -> torch.Tensor:
        """Normalise ``x`` of shape ``(*, *normalized_shape)``; returns ``x``'s shape."""
        _validate_params(self, params)
        shape = self._shape
        k = len(shape)
        ok = isinstance(x, torch.Tensor) and x.dim() >= k and tuple(x.shape[x.dim() - k :]) == shape
        _check_input("LayerNorm", x, ok, f"(*, {', '.join(map(str, shape))})")
        return _F.layer_norm(x, shape, params.get("weight"), params.get("bias"), self.eps)


@dataclass(frozen=True)
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

    def __post_init__(self) -> None:
        if self.num_groups <= 0 or self.num_channels % self.num_groups != 0:
            raise ValueError(
                f"GroupNorm: num_channels ({self.num_channels}) must be divisible by "
                f"num_groups ({self.num_groups})"
            )

    def init(self, key: Any = None) -> Params:
        """``{"weight": ones, "bias": zeros}`` of shape ``(num_channels,)`` (``key`` unused)."""
        return _affine_params((self.num_channels,), self.affine, self.bias, self.device, self.dtype)

    def apply(
        self, params: Params, x: torch.Tensor, *, key: Any = None, train: bool = False
    ) -> torch.Tensor:
        """Normalise ``x`` of shape ``(N, num_channels, *)``; returns ``x``'s shape."""
        _validate_params(self, params)
        ok = isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[1] == self.num_channels
        _check_input("GroupNorm", x, ok, f"(N, {self.num_channels}, *)")
        return _F.group_norm(x, self.num_groups, params.get("weight"), params.get("bias"), self.eps)


class _BatchNorm(Layer):
    """Shared implementation of BatchNorm1d/2d (see the module docstring for the protocol)."""

    stateful: ClassVar[bool] = True
    _ranks: ClassVar[tuple[int, ...]] = ()
    _shape_text: ClassVar[str] = ""

    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    device: Any
    dtype: Any
    bias: bool

    def _check_args(self) -> None:
        name = type(self).__name__
        if self.num_features <= 0:
            raise ValueError(f"{name}: num_features must be positive, got {self.num_features}")

    def init(self, key: Any = None) -> Params:
        """``{"weight": ones, "bias": zeros}`` of shape ``(num_features,)`` (``key`` unused)."""
        return _affine_params((self.num_features,), self.affine, self.bias, self.device, self.dtype)

    def init_state(self) -> State:
        """``running_mean`` zeros, ``running_var`` ones, ``num_batches_tracked`` 0 (int64).

        ``{}`` when ``track_running_stats=False``.
        """
        if not self.track_running_stats:
            return {}
        kw = _factory(self.device, self.dtype)
        return {
            "running_mean": torch.zeros(self.num_features, **kw),
            "running_var": torch.ones(self.num_features, **kw),
            "num_batches_tracked": torch.tensor(0, dtype=torch.long, device=self.device),
        }

    def _check_state(self, state: State) -> None:
        name = type(self).__name__
        expected = _tree.map(lambda t: t.to("meta"), self.init_state())
        if not isinstance(state, dict):
            raise ValueError(f"{name}: state must be a dict like {{{', '.join(expected)}}}")
        diff = _tree.first_difference(state, expected)
        if diff is not None:
            raise ValueError(f"{name}: state at '{diff[0]}' does not match the layer: {diff[1]}")
        for path, got, exp in zip(
            _tree.paths(state), _tree.leaves(state), _tree.leaves(expected), strict=True
        ):
            if tuple(got.shape) != tuple(exp.shape):
                raise ValueError(
                    f"{name}: state '{path}' has shape {tuple(got.shape)}, "
                    f"expected {tuple(exp.shape)}"
                )

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
        ``y = (x - mu) / sqrt(var + eps) * weight + bias``. The running
        statistics carry no gradient.

        Args:
            params: ``{"weight", "bias"}`` (or ``{}`` without ``affine``).
            x: input of the layer's shape (see the class docstring).
            state: ``init_state()`` or a previous ``new_state``.
            key: unused.
            train: batch statistics and running-stat update.

        Returns:
            ``(y, new_state)``; ``y`` has ``x``'s shape.
        """
        name = type(self).__name__
        _validate_params(self, params)
        if not torch.compiler.is_compiling():
            self._check_state(state)
        ok = (
            isinstance(x, torch.Tensor)
            and x.dim() in self._ranks
            and x.shape[1] == self.num_features
        )
        _check_input(name, x, ok, self._shape_text.format(c=self.num_features))
        weight, bias = params.get("weight"), params.get("bias")
        use_batch = train or not self.track_running_stats
        if not use_batch:
            y = _F.batch_norm(
                x, state["running_mean"], state["running_var"], weight, bias, eps=self.eps
            )
            return y, state
        mu, var, count = _F._batch_stats(x)
        if count <= 1:
            raise ValueError(
                f"{name}: expected more than 1 value per channel when training, got input "
                f"of shape {tuple(x.shape)}"
            )
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - mu.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if weight is not None:
            y = y * weight.reshape(shape)
        if bias is not None:
            y = y + bias.reshape(shape)
        if not (train and self.track_running_stats):
            return y, state
        tracked = state["num_batches_tracked"] + 1
        rm, rv = state["running_mean"], state["running_var"]
        if self.momentum is None:
            f = 1.0 / tracked.to(rm.dtype)
        else:
            f = self.momentum
        mu_d = mu.detach().to(rm.dtype)
        unbiased = (var.detach() * (count / (count - 1))).to(rv.dtype)
        new_state = {
            "running_mean": (1 - f) * rm + f * mu_d,
            "running_var": (1 - f) * rv + f * unbiased,
            "num_batches_tracked": tracked,
        }
        return y, new_state


@dataclass(frozen=True)
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

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    device: Any = None
    dtype: Any = None
    _: KW_ONLY
    bias: bool = True

    def __post_init__(self) -> None:
        self._check_args()


@dataclass(frozen=True)
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

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    device: Any = None
    dtype: Any = None
    _: KW_ONLY
    bias: bool = True

    def __post_init__(self) -> None:
        self._check_args()
