"""``AdaptiveLogSoftmaxWithLoss``: the clustered softmax of Grave et al. (2017), as torch's."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from fdl import _eager
from fdl import random as _random
from fdl.nn._base import Layer, OptKey, Params, Tensor
from fdl.nn._functional_activations import log_softmax
from fdl.nn._functional_layers import linear
from fdl.nn._layer_utils import split_key
from fdl.nn.container import Sequential
from fdl.nn.containers_list import ModuleList
from fdl.nn.linear import Linear

__all__ = ["ASMoutput", "AdaptiveLogSoftmaxWithLoss"]

_CUTOFFS_MSG = (
    "cutoffs should be a sequence of unique, positive integers sorted in an increasing order, "
    "where each value is between 1 and n_classes-1"
)


class ASMoutput(NamedTuple):
    """What :meth:`AdaptiveLogSoftmaxWithLoss.apply` returns (torch's ``_ASMoutput``)."""

    output: Tensor  #: the log-probability of each target, ``(N,)`` (``()`` unbatched)
    loss: Tensor  #: ``mean(-output)``, a 0-d tensor


class AdaptiveLogSoftmaxWithLoss(Layer):
    r"""Adaptive softmax (Grave et al., 2017), as ``torch.nn.AdaptiveLogSoftmaxWithLoss``.

    Classes are split by ``cutoffs = (c_1, ..., c_K)`` (with ``c_0 = 0``,
    ``c_{K+1} = n_classes``) into a shortlist ``[0, c_1)`` and ``K`` tail clusters
    ``[c_i, c_{i+1})``. The head scores the shortlist and one token per cluster;
    cluster ``i`` has its own two-layer projection
    ``tail_i(x) = (x W_{i,0}^T) W_{i,1}^T`` with hidden size
    ``int(in_features // div_value ** (i + 1))``::

        h = log_softmax(x W_head^T [+ b_head])               # (N, c_1 + K)
        log p(y | x) = h[y]                                  if y < c_1
        log p(y | x) = h[c_1 + i] + log_softmax(tail_i(x))[y - c_i]   if c_i <= y < c_{i+1}
        loss = mean(-log p(target | x))

    Params (torch's ``state_dict`` keys): ``head.weight`` ``(c_1 + K, in_features)``,
    ``head.bias`` (with ``head_bias=True``), ``tail.{i}.0.weight``
    ``(hidden_i, in_features)`` and ``tail.{i}.1.weight`` ``(c_{i+1} - c_i, hidden_i)``,
    all drawn as ``torch.nn.Linear`` draws them.

    Shapes: ``apply(params, input, target)`` takes ``input`` ``(N, in_features)`` with
    ``target`` ``(N,)``, or ``(in_features,)`` with a 0-d ``target``, and returns
    :class:`ASMoutput` ``(output, loss)``. ``log_prob(params, input)`` gives
    ``(N, n_classes)``; ``predict(params, input)`` gives ``(N,)``.

    Differences from torch: every cluster's projection runs on every row, masked
    by the targets (torch gathers each cluster's rows first), so shapes never
    depend on the data and the layer compiles and vmaps; the cost is that of
    ``log_prob``. ``predict`` is ``argmax(log_prob(...), dim=1)`` (torch skips the
    tails when the head's best guess is in the shortlist, with the same result).
    ``log_prob`` and ``predict`` also take an unbatched ``(in_features,)`` input
    (torch's need ``(N, in_features)``). The ``cutoffs`` field is the sequence given
    (torch's attribute appends ``n_classes``). Out-of-range targets raise eagerly
    (not while compiled or under ``vmap``, where values cannot be read).

    Args:
        in_features: size of each input sample.
        n_classes: number of classes.
        cutoffs: increasing cluster boundaries in ``[1, n_classes - 1]``.
        div_value: the hidden size of cluster ``i`` is ``in_features // div_value**(i+1)``.
        head_bias: whether the head has a bias.
        device: device of the initialised params.
        dtype: dtype of the initialised params.

    Example:
        >>> import fdl, torch
        >>> asm = fdl.nn.AdaptiveLogSoftmaxWithLoss(16, 20, cutoffs=[4, 10], div_value=2.0)
        >>> params = asm.init(fdl.random.key(0))
        >>> list(fdl.nn.state_dict(params))
        ['head.weight', 'tail.0.0.weight', 'tail.0.1.weight', 'tail.1.0.weight', 'tail.1.1.weight']
        >>> x, target = torch.randn(5, 16), torch.tensor([0, 3, 4, 12, 19])
        >>> out, loss = asm.apply(params, x, target)
        >>> out.shape, loss.shape
        (torch.Size([5]), torch.Size([]))
        >>> bool(torch.allclose(asm.log_prob(params, x).exp().sum(1), torch.ones(5)))
        True
        >>> asm.predict(params, x).shape
        torch.Size([5])
    """

    in_features: int
    n_classes: int
    cutoffs: tuple[int, ...]
    div_value: float = 4.0
    head_bias: bool = False
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        cutoffs = self.cutoffs
        if isinstance(cutoffs, (str, bytes)) or not isinstance(cutoffs, Sequence):
            raise TypeError(
                f"AdaptiveLogSoftmaxWithLoss: cutoffs must be a sequence of ints, got {cutoffs!r}"
            )
        cutoffs = list(cutoffs)
        if len(cutoffs) == 0:
            raise ValueError("cutoffs should be a sequence of length larger than 0")
        if (
            not all(isinstance(c, int | float) and not isinstance(c, bool) for c in cutoffs)
            or cutoffs != sorted(cutoffs)
            or min(cutoffs) <= 0
            or max(cutoffs) > self.n_classes - 1
            or len(set(cutoffs)) != len(cutoffs)
            or any(int(c) != c for c in cutoffs)
        ):
            raise ValueError(_CUTOFFS_MSG)
        self.__dict__["cutoffs"] = tuple(int(c) for c in cutoffs)
        opts: dict[str, Any] = {"device": self.device, "dtype": self.dtype}
        bounds = self._bounds
        tail = []
        for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            hidden = int(self.in_features // (self.div_value ** (i + 1)))
            tail.append(
                Sequential(
                    Linear(self.in_features, hidden, bias=False, **opts),
                    Linear(hidden, hi - lo, bias=False, **opts),
                )
            )
        head = Linear(self.in_features, self.head_size, bias=self.head_bias, **opts)
        self._init_attributes(head=head, tail=ModuleList(tail))

    # -- derived sizes (torch's attributes) ----------------------------------

    @property
    def _bounds(self) -> tuple[int, ...]:
        """``(c_1, ..., c_K, n_classes)``: torch's ``self.cutoffs``."""
        return (*self.cutoffs, self.n_classes)

    @property
    def shortlist_size(self) -> int:
        """``c_1``: the classes scored by the head directly."""
        return self.cutoffs[0]

    @property
    def n_clusters(self) -> int:
        """``K``: the number of tail clusters."""
        return len(self.cutoffs)

    @property
    def head_size(self) -> int:
        """``c_1 + K``: the shortlist plus one token per cluster."""
        return self.shortlist_size + self.n_clusters

    # -- params --------------------------------------------------------------

    def init(self, key: _random.Key) -> Params:
        """``head`` and ``tail`` params, each drawn as ``torch.nn.Linear`` draws them."""
        k_head, k_tail = split_key(key)
        return {"head": self.head.init(k_head), "tail": self.tail.init(k_tail)}

    # -- the formula -----------------------------------------------------------

    def _head_log_prob(self, params: Params, x: Tensor) -> Tensor:
        head = params["head"]
        return log_softmax(linear(x, head["weight"], head.get("bias")), dim=1)

    def _tail_log_prob(self, params: Params, x: Tensor, i: int) -> Tensor:
        proj = params["tail"][str(i)]
        hidden = linear(x, proj["0"]["weight"])  # (N, hidden_i)
        return log_softmax(linear(hidden, proj["1"]["weight"]), dim=1)  # (N, c_{i+1} - c_i)

    def _check_features(self, x: Any, what: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"AdaptiveLogSoftmaxWithLoss: input must be a tensor, got {x!r}")
        if x.dim() not in (1, 2) or x.shape[-1] != self.in_features:
            raise ValueError(
                f"AdaptiveLogSoftmaxWithLoss: {what} expects input of shape "
                f"(N, {self.in_features}) or ({self.in_features},), got {tuple(x.shape)}"
            )

    def _check_target(self, input: Tensor, target: Any) -> None:
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"AdaptiveLogSoftmaxWithLoss: target must be a tensor, got {target!r}")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(
                f"AdaptiveLogSoftmaxWithLoss: target must be an integer tensor, got {target.dtype}"
            )
        if target.dim() == 1:
            if input.dim() == 0 or input.size(0) != target.size(0):
                raise RuntimeError(
                    "Input and target should have the same size in the batch dimension."
                )
            if input.dim() != 2:
                raise RuntimeError(
                    "1D target tensor expects 2D input tensors, "
                    f"but found inputs with size {input.size()}"
                )
        elif target.dim() == 0:
            if input.dim() != 1:
                raise RuntimeError(
                    "0D target tensor expects 1D input tensors, "
                    f"but found inputs with size {input.size()}"
                )
        else:
            raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
        self._check_features(input, "apply")
        values_visible = not torch._C._functorch.is_functorch_wrapped_tensor(target)  # not vmapped
        if (
            values_visible
            and target.numel()
            and (target.min() < 0 or target.max() >= self.n_classes)
        ):
            raise RuntimeError(
                f"Target values should be in [0, {self.n_classes - 1}], but values in range "
                f"[{target.min().item()}, {target.max().item()}] were found. "
            )

    def apply(
        self,
        params: Params,
        input: Tensor,
        target: Tensor,
        *,
        key: OptKey = None,
        train: bool = False,
    ) -> ASMoutput:
        """``(output, loss)``: the log-probability of every target and ``mean(-output)``."""
        if _eager.validating():
            self._check_target(input, target)
        batched = target.dim() > 0
        x = input if batched else input.unsqueeze(0)  # (N, in_features)
        t = target if batched else target.unsqueeze(0)  # (N,)
        shortlist = self.shortlist_size
        head_index = t  # the head token of each row: its class, or its cluster's token
        output = torch.zeros(t.shape, dtype=x.dtype, device=x.device)  # (N,)
        for i, (lo, hi) in enumerate(itertools.pairwise(self._bounds)):
            in_cluster = (t >= lo) & (t < hi)  # (N,)
            local = torch.where(in_cluster, t - lo, torch.zeros_like(t))  # (N,)
            tail_lp = self._tail_log_prob(params, x, i)  # (N, hi - lo)
            picked = tail_lp.gather(1, local.unsqueeze(1)).squeeze(1)  # (N,)
            output = output + torch.where(in_cluster, picked, torch.zeros_like(picked))
            head_index = torch.where(in_cluster, torch.full_like(t, shortlist + i), head_index)
        head_lp = self._head_log_prob(params, x)  # (N, shortlist + K)
        output = output + head_lp.gather(1, head_index.unsqueeze(1)).squeeze(1)
        loss = (-output).mean()
        return ASMoutput(output if batched else output.squeeze(0), loss)

    def log_prob(self, params: Params, input: Tensor) -> Tensor:
        """``log p(c | x)`` for every class ``c``: ``(N, n_classes)`` (``(n_classes,)`` unbatched).

        The shortlist columns are the head's; cluster ``i``'s columns are
        ``h[c_1 + i] + log_softmax(tail_i(x))``.
        """
        if _eager.validating():
            self._check_features(input, "log_prob")
            self.check_params(params)
        batched = input.dim() > 1
        x = input if batched else input.unsqueeze(0)  # (N, in_features)
        head_lp = self._head_log_prob(params, x)  # (N, shortlist + K)
        s = self.shortlist_size
        parts = [head_lp[:, :s]]
        for i in range(self.n_clusters):
            parts.append(self._tail_log_prob(params, x, i) + head_lp[:, s + i : s + i + 1])
        out = torch.cat(parts, dim=1)  # (N, n_classes)
        return out if batched else out.squeeze(0)

    def predict(self, params: Params, input: Tensor) -> Tensor:
        """The most probable class of each row: ``argmax(log_prob(params, input), dim=-1)``."""
        return torch.argmax(self.log_prob(params, input), dim=-1)
