"""``InstanceNorm1d/2d/3d``: per-sample, per-channel normalisation, as ``torch.nn``.

Running statistics (``track_running_stats=True``) live in an explicit state, as BatchNorm's::

    norm = fdl.nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
    params, state = norm.init(key), norm.init_state()
    y, state = norm.apply(params, x, state=state, train=True)   # instance statistics
    y, _ = norm.apply(params, x, state=state)                   # running statistics

Example:
    >>> import torch, fdl
    >>> norm = fdl.nn.InstanceNorm1d(2)
    >>> y, state = norm.apply({}, torch.tensor([[[1.0, 3.0], [0.0, 2.0]]]), state={})
    >>> y
    tensor([[[-1.0000,  1.0000],
             [-1.0000,  1.0000]]])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fdl import tree as _tree
from fdl.nn import _functional_norms as _F
from fdl.nn._base import Layer, Params, State
from fdl.nn._layer_utils import affine_norm_params, running_stats

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _InstanceNorm(Layer):
    """Shared implementation; ``spatial`` is the number of spatial dimensions."""

    stateful: ClassVar[bool] = True
    spatial: ClassVar[int]

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = False
    track_running_stats: bool = False
    device: Any = None
    dtype: Any = None

    def __post_init__(self) -> None:
        if self.num_features <= 0:
            raise ValueError(
                f"{type(self).__name__}: num_features must be positive, got {self.num_features}"
            )

    def init(self, key: Any = None) -> Params:
        """``{"weight": ones, "bias": zeros}`` ``(num_features,)`` with ``affine``, else ``{}``."""
        return affine_norm_params((self.num_features,), self.affine, True, self.device, self.dtype)

    def init_state(self) -> State:
        """``running_mean`` zeros, ``running_var`` ones, ``num_batches_tracked`` 0 if tracking."""
        return running_stats(self.num_features, self.track_running_stats, self.device, self.dtype)

    def apply(
        self,
        params: Params,
        x: torch.Tensor,
        *,
        state: State,
        key: Any = None,
        train: bool = False,
    ) -> tuple[torch.Tensor, State]:
        """Normalise each ``(n, c)`` slice; returns ``(y, new_state)``.

        Instance statistics are used when ``train=True`` or without tracking:
        ``y = (x - mu[n, c]) / sqrt(var[n, c] + eps) * weight[c] + bias[c]`` with the biased
        variance over the spatial dimensions. Tracking in training, with ``f = momentum``
        (0 when ``momentum is None``, as torch) and ``L`` spatial elements::

            running_mean = (1 - f) * running_mean + f * mean_n(mu[n])
            running_var  = (1 - f) * running_var  + f * mean_n(var[n] * L / (L - 1))

        (``num_batches_tracked`` is left unchanged, as torch's ``instance_norm`` does).
        ``train=False`` with tracking normalises by the running statistics.

        Args:
            params: ``{"weight", "bias"}`` with ``affine``, else ``{}``.
            x: ``(N, C, *spatial)`` or unbatched ``(C, *spatial)``.
            state: ``init_state()`` or a previous new state.
            key: unused.
            train: use (and track) instance statistics.

        Returns:
            ``(y, new_state)``.
        """
        name = type(self).__name__
        if not torch.compiler.is_compiling():
            self.check_params(params)
            _tree.check_match(
                state,
                self.init_state(),
                got_name="the state",
                expected_name=f"{name}.init_state()",
                check_shapes=True,
                context=name,
            )
        if not isinstance(x, torch.Tensor) or x.dim() not in (self.spatial + 1, self.spatial + 2):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{name}: expected input (N, C, *) or (C, *) with {self.spatial} spatial "
                f"dimensions, got {got}"
            )
        unbatched = x.dim() == self.spatial + 1
        xb = x.unsqueeze(0) if unbatched else x  # (N, C, *)
        if (self.affine or self.track_running_stats) and xb.shape[1] != self.num_features:
            raise ValueError(
                f"{name}: expected {self.num_features} channels, got input {tuple(x.shape)}"
            )
        use_input = train or not self.track_running_stats
        y = _F.instance_norm(
            xb,
            state.get("running_mean"),
            state.get("running_var"),
            params.get("weight"),
            params.get("bias"),
            use_input_stats=use_input,
            eps=self.eps,
        )
        if unbatched:
            y = y.squeeze(0)
        if not (train and self.track_running_stats):
            return y, state
        mu, var, count = _F.instance_stats(xb.detach())
        f = 0.0 if self.momentum is None else self.momentum
        rm, rv = state["running_mean"], state["running_var"]
        new_state = {
            "running_mean": (1 - f) * rm + f * mu.mean(0).to(rm.dtype),
            "running_var": (1 - f) * rv + f * (var * (count / (count - 1))).mean(0).to(rv.dtype),
            "num_batches_tracked": state["num_batches_tracked"],
        }
        return y, new_state


@dataclass(frozen=True)
class InstanceNorm1d(_InstanceNorm):
    """Instance normalisation of ``(N, C, L)`` or ``(C, L)``; see :meth:`apply`."""

    spatial: ClassVar[int] = 1


@dataclass(frozen=True)
class InstanceNorm2d(_InstanceNorm):
    """Instance normalisation of ``(N, C, H, W)`` or ``(C, H, W)``; see :meth:`apply`."""

    spatial: ClassVar[int] = 2


@dataclass(frozen=True)
class InstanceNorm3d(_InstanceNorm):
    """Instance normalisation of ``(N, C, D, H, W)`` or ``(C, D, H, W)``; see :meth:`apply`."""

    spatial: ClassVar[int] = 3
