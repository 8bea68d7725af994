"""``InstanceNorm1d/2d/3d``: per-sample, per-channel normalisation, as ``torch.nn``.

Running statistics (``track_running_stats=True``) live in an explicit state that goes in
and comes out, as BatchNorm's (see :mod:`fdl.nn.normalization`): ``train=True`` normalises
by the instance statistics and updates the running ones, ``train=False`` normalises by the
running statistics. Without tracking the state is ``{}``.

Example:
    >>> import torch, fdl
    >>> norm = fdl.nn.InstanceNorm1d(2)
    >>> y, state = norm.apply({}, torch.tensor([[[1.0, 3.0], [0.0, 2.0]]]), state={})
    >>> y
    tensor([[[-1.0000,  1.0000],
             [-1.0000,  1.0000]]])
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fdl import tree as _tree
from fdl.nn import _functional_norms as _F
from fdl.nn._base import Params, State
from fdl.nn.normalization import _RunningNorm

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _InstanceNorm(_RunningNorm):
    """Shared implementation; ``spatial`` is the number of spatial dimensions."""

    spatial: ClassVar[int]

    affine: bool = False
    track_running_stats: bool = False

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
        unbiased = (var * (count / (count - 1))).mean(0)
        return y, self._moving_average(state, f, mu.mean(0), unbiased, state["num_batches_tracked"])


class InstanceNorm1d(_InstanceNorm):
    """Instance normalisation of ``(N, C, L)`` or ``(C, L)``; see :meth:`apply`."""

    spatial: ClassVar[int] = 1


class InstanceNorm2d(_InstanceNorm):
    """Instance normalisation of ``(N, C, H, W)`` or ``(C, H, W)``; see :meth:`apply`."""

    spatial: ClassVar[int] = 2


class InstanceNorm3d(_InstanceNorm):
    """Instance normalisation of ``(N, C, D, H, W)`` or ``(C, D, H, W)``; see :meth:`apply`."""

    spatial: ClassVar[int] = 3
