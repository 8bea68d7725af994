r"""Stochastic weight averaging and EMA of params, as ``torch.optim.swa_utils``, purely.

::

    averager = fdl.optim.swa.AveragedModel()                     # SWA: the equal average
    avg_state = averager.init(params)                            # n_averaged = 0
    for epoch in range(epochs):
        ...                                                      # train params
        if epoch >= swa_start:
            avg_state = averager.update(avg_state, params)
    bn_state = fdl.optim.swa.update_bn(apply_fn, avg_state.params, bn_state, batches)

Three pieces, each torch's:

- :class:`SWALR`, the schedule annealing the rate to ``swa_lr``;
- :class:`AveragedModel`, an explicit :class:`AveragedState` (the averaged
  params, buffers, and ``n_averaged`` as an int64 tensor) updated with the
  equal average (default, :func:`get_swa_avg_fn`) or an exponential moving
  average (:func:`get_ema_avg_fn`, :func:`get_ema_multi_avg_fn`);
- :func:`update_bn`, recomputing BatchNorm running statistics for the averaged
  params as the cumulative average over a pass of batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from fdl import tree

__all__ = [
    "SWALR",
    "AveragedModel",
    "AveragedState",
    "get_ema_avg_fn",
    "get_ema_multi_avg_fn",
    "get_swa_avg_fn",
    "get_swa_multi_avg_fn",
    "update_bn",
]

Tensor = torch.Tensor
AvgFn = Callable[[Tensor, Tensor, Tensor], Tensor]
MultiAvgFn = Callable[[Sequence[Tensor], Sequence[Tensor], Tensor], list[Tensor]]


# ---------------------------------------------------------------------------
# SWALR
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SWALR:
    r"""Anneal the rate from ``lr`` to ``swa_lr`` over ``anneal_epochs``, then hold it.

    .. math::
        \eta_k = \eta_{swa}\,\alpha_k + \eta\,(1 - \alpha_k),\qquad
        \alpha_k = a\big(\min(1, k / \max(1, E))\big)

    with ``a(t) = (1 - cos(π t)) / 2`` (``'cos'``) or ``a(t) = t``
    (``'linear'``), ``E = anneal_epochs`` (with ``E = 0``, :math:`\alpha = 1`
    from the start). torch computes it recursively, recovering the rate before
    annealing from the current one; the closed form is the same rate to
    rounding. Mirrors ``torch.optim.swa_utils.SWALR(opt, swa_lr, anneal_epochs=10,
    anneal_strategy='cos')`` with ``lr`` the optimizer's rate; ``count`` is the
    number of ``sched.step()`` calls (usually epochs since SWA began:
    ``lambda c: swalr(c // steps_per_epoch - swa_start)``).

    Example:
        >>> import torch
        >>> s = SWALR(1.0, swa_lr=0.1, anneal_epochs=2, anneal_strategy="linear")
        >>> [round(float(s(torch.tensor(k))), 6) for k in range(4)]
        [1.0, 0.55, 0.1, 0.1]
    """

    lr: float
    swa_lr: float
    anneal_epochs: int = 10
    anneal_strategy: str = "cos"

    def __post_init__(self) -> None:
        if not self.lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {self.lr}")
        if self.anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                "anneal_strategy must be one of 'cos' or 'linear', "
                f"instead got {self.anneal_strategy}"
            )
        if not isinstance(self.anneal_epochs, int) or self.anneal_epochs < 0:
            raise ValueError(
                f"anneal_epochs must be equal or greater than 0, got {self.anneal_epochs}"
            )

    def __call__(self, count: Tensor) -> Tensor:
        k = torch.as_tensor(count).to(torch.float64)
        if self.anneal_epochs == 0:
            k = torch.clamp(k, min=1.0)
        t = torch.clamp(k / max(1, self.anneal_epochs), 0.0, 1.0)
        alpha = (1 - torch.cos(math.pi * t)) / 2 if self.anneal_strategy == "cos" else t
        return self.swa_lr * alpha + self.lr * (1 - alpha)


# ---------------------------------------------------------------------------
# averaging functions
# ---------------------------------------------------------------------------


def _check_decay(decay: float) -> None:
    if decay < 0.0 or decay > 1.0:
        raise ValueError(
            f"Invalid decay value {decay} provided. Please provide a value in [0,1] range."
        )


def _lerp(a: Tensor, b: Tensor, w: float | Tensor) -> Tensor:
    """``a + w (b - a)`` in the two-sided form of ``torch.lerp`` (exact at ``w = 1``)."""
    w = torch.as_tensor(w, dtype=a.dtype, device=a.device)
    return torch.where(w.abs() < 0.5, a + w * (b - a), b - (b - a) * (1 - w))


def get_swa_avg_fn() -> AvgFn:
    r"""The equal average, one tensor at a time: :math:`\bar p + (p - \bar p)/(n + 1)`.

    ``n`` is the number of models averaged so far. The default of
    :class:`AveragedModel` (as torch's on CPU).

    Example:
        >>> import torch
        >>> get_swa_avg_fn()(torch.tensor(1.0), torch.tensor(4.0), torch.tensor(2))
        tensor(2.)
    """

    def swa_update(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        return averaged + (current - averaged) / (num_averaged + 1)

    return swa_update


def get_ema_avg_fn(decay: float = 0.999) -> AvgFn:
    r"""The exponential moving average, a tensor at a time: :math:`\delta \bar p + (1 - \delta) p`.

    Example:
        >>> import torch
        >>> get_ema_avg_fn(0.75)(torch.tensor(0.0), torch.tensor(4.0), torch.tensor(3))
        tensor(1.)
    """
    _check_decay(decay)

    def ema_update(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        return decay * averaged + (1 - decay) * current

    return ema_update


def get_swa_multi_avg_fn() -> MultiAvgFn:
    r"""The equal average over lists, as a lerp: :math:`\mathrm{lerp}(\bar p, p, 1/(n+1))`.

    Integer tensors take :math:`\bar p + (p - \bar p)/(n + 1)` (truncated to
    their dtype by :class:`AveragedModel`).

    Example:
        >>> import torch
        >>> get_swa_multi_avg_fn()([torch.tensor(1.0)], [torch.tensor(4.0)], torch.tensor(2))
        [tensor(2.)]
    """

    def swa_update(
        averaged: Sequence[Tensor], current: Sequence[Tensor], num_averaged: Tensor
    ) -> list[Tensor]:
        if averaged and (averaged[0].is_floating_point() or averaged[0].is_complex()):
            w = 1 / (num_averaged + 1)
            return [_lerp(a, c, w) for a, c in zip(averaged, current, strict=True)]
        return [a + (c - a) / (num_averaged + 1) for a, c in zip(averaged, current, strict=True)]

    return swa_update


def get_ema_multi_avg_fn(decay: float = 0.999) -> MultiAvgFn:
    r"""The EMA over lists, as a lerp: :math:`\mathrm{lerp}(\bar p, p, 1 - \delta)`.

    Integer tensors take :math:`\delta \bar p + (1 - \delta) p`.

    Example:
        >>> import torch
        >>> get_ema_multi_avg_fn(0.75)([torch.tensor(0.0)], [torch.tensor(4.0)], torch.tensor(3))
        [tensor(1.)]
    """
    _check_decay(decay)

    def ema_update(
        averaged: Sequence[Tensor], current: Sequence[Tensor], num_averaged: Tensor
    ) -> list[Tensor]:
        if averaged and (averaged[0].is_floating_point() or averaged[0].is_complex()):
            return [_lerp(a, c, 1 - decay) for a, c in zip(averaged, current, strict=True)]
        return [a * decay + c * (1 - decay) for a, c in zip(averaged, current, strict=True)]

    return ema_update


# ---------------------------------------------------------------------------
# AveragedModel
# ---------------------------------------------------------------------------


class AveragedState(NamedTuple):
    """The state of :class:`AveragedModel`.

    Attributes:
        params: the averaged params (the structure of the model's).
        buffers: the buffers (e.g. BatchNorm state): averaged with
            ``use_buffers=True``, else the model's latest, copied.
        n_averaged: how many models have been averaged (int64 scalar).
    """

    params: Any
    buffers: Any
    n_averaged: Tensor


@dataclass(frozen=True)
class AveragedModel:
    r"""A running average of params: ``torch.optim.swa_utils.AveragedModel`` as a pure state.

    ``state = averager.init(params, buffers)`` starts at ``n_averaged = 0``
    (the params as given, as torch's ``deepcopy`` of the model); each
    ``state = averager.update(state, params, buffers)`` then takes, per leaf,

    .. math::
        \bar p \leftarrow \begin{cases} p & n = 0 \\ \text{avg}(\bar p, p, n) & n > 0 \end{cases},
        \qquad n \leftarrow n + 1

    with ``avg`` :func:`get_swa_avg_fn` (the equal average
    :math:`\bar p + (p - \bar p)/(n+1)`) by default, ``avg_fn`` (one tensor at
    a time) or ``multi_avg_fn`` (lists, e.g. :func:`get_ema_multi_avg_fn`).
    With ``use_buffers=True`` the buffers are averaged the same way (leaves in
    the order of params, then buffers); otherwise the model's buffers are
    copied. Each result keeps its leaf's dtype (integer buffers are truncated,
    as torch's ``copy_``). The step is branch-free on ``n_averaged``, so a
    compiled update traces once.

    Example:
        >>> import torch
        >>> averager = AveragedModel()
        >>> state = averager.init({"w": torch.tensor(0.0)})
        >>> for w in [1.0, 2.0, 6.0]:
        ...     state = averager.update(state, {"w": torch.tensor(w)})
        >>> float(state.params["w"]), int(state.n_averaged)
        (3.0, 3)
        >>> ema = AveragedModel(multi_avg_fn=get_ema_multi_avg_fn(0.5))
    """

    avg_fn: AvgFn | None = None
    multi_avg_fn: MultiAvgFn | None = None
    use_buffers: bool = False

    def __post_init__(self) -> None:
        if self.avg_fn is not None and self.multi_avg_fn is not None:
            raise ValueError("Only one of avg_fn and multi_avg_fn should be provided")

    def init(self, params: Any, buffers: Any = None) -> AveragedState:
        """The state before the first update: copies of ``params`` and ``buffers``, ``n = 0``."""
        first = tree.leaves(params)
        device = first[0].device if first else None
        return AveragedState(
            params=tree.map(torch.clone, params),
            buffers=tree.map(torch.clone, buffers) if buffers is not None else None,
            n_averaged=torch.zeros((), dtype=torch.int64, device=device),
        )

    def _average(self, avg: list[Tensor], cur: list[Tensor], n: Tensor) -> list[Tensor]:
        if self.multi_avg_fn is not None:
            # torch groups the tensors by dtype before calling multi_avg_fn
            out: list[Tensor | None] = [None] * len(avg)
            for dtype in dict.fromkeys(a.dtype for a in avg):
                idx = [i for i, a in enumerate(avg) if a.dtype == dtype]
                got = self.multi_avg_fn([avg[i] for i in idx], [cur[i] for i in idx], n)
                for i, g in zip(idx, got, strict=True):
                    out[i] = g
            return out  # type: ignore[return-value]
        fn = self.avg_fn if self.avg_fn is not None else get_swa_avg_fn()
        return [fn(a, c, n) for a, c in zip(avg, cur, strict=True)]

    def update(self, state: AveragedState, params: Any, buffers: Any = None) -> AveragedState:
        """Fold ``params`` (and ``buffers``) into the average; pure."""
        tree.check_match(
            params,
            state.params,
            got_name="the params",
            expected_name="the averaged params",
            check_shapes=True,
            context="AveragedModel.update",
        )
        avg_p, p_def = tree.flatten(state.params)
        cur_p = [x.detach() for x in tree.leaves(params)]
        have_buffers = state.buffers is not None
        if have_buffers:
            if buffers is None:
                raise ValueError("AveragedModel.update: the state has buffers; pass the model's")
            tree.check_match(
                buffers,
                state.buffers,
                got_name="the buffers",
                expected_name="the averaged buffers",
                check_shapes=True,
                context="AveragedModel.update",
            )
        avg_b, b_def = tree.flatten(state.buffers) if have_buffers else ([], None)
        cur_b = [x.detach() for x in tree.leaves(buffers)] if have_buffers else []
        if self.use_buffers:
            avg_all, cur_all = avg_p + avg_b, cur_p + cur_b
        else:
            avg_all, cur_all = avg_p, cur_p
        n = state.n_averaged
        new = self._average(avg_all, cur_all, n)
        first = n == 0
        new = [
            torch.where(first, c, m.to(a.dtype))
            for a, c, m in zip(avg_all, cur_all, new, strict=True)
        ]
        new_p = tree.unflatten(p_def, new[: len(avg_p)])
        if not have_buffers:
            new_b = None
        elif self.use_buffers:
            new_b = tree.unflatten(b_def, new[len(avg_p) :])
        else:
            new_b = tree.unflatten(b_def, [x.clone() for x in cur_b])
        return AveragedState(new_p, new_b, n + 1)


# ---------------------------------------------------------------------------
# update_bn
# ---------------------------------------------------------------------------

_BN_KEYS = frozenset({"running_mean", "running_var", "num_batches_tracked"})


def _is_bn(node: Any) -> bool:
    return isinstance(node, dict) and set(node) == _BN_KEYS


def _map_bn(fn: Callable[[dict], dict], state: Any) -> Any:
    """``state`` with each BatchNorm entry (a dict of three buffers) replaced by ``fn(entry)``."""
    if _is_bn(state):
        return fn(state)
    if isinstance(state, dict):
        return {k: _map_bn(fn, v) for k, v in state.items()}
    return state


def _bn_entries(state: Any, prefix: str = "") -> dict[str, dict]:
    if _is_bn(state):
        return {prefix: state}
    out: dict[str, dict] = {}
    if isinstance(state, dict):
        for k, v in state.items():
            out.update(_bn_entries(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def update_bn(
    apply_fn: Callable[..., tuple[Any, Any]],
    params: Any,
    bn_state: Any,
    batches: Iterable[Any],
    *,
    momentum: float | None = 0.1,
) -> Any:
    r"""BatchNorm running statistics recomputed for ``params``: the average over ``batches``.

    As ``torch.optim.swa_utils.update_bn``: every BatchNorm entry of
    ``bn_state`` (a dict ``{running_mean, running_var, num_batches_tracked}``)
    is reset (mean 0, variance 1, count 0), then each batch ``x`` (the first
    element of a tuple or list batch) is run through
    ``apply_fn(params, x, bn_state)`` in training mode and the statistics are
    averaged cumulatively, torch's ``momentum=None``:

    .. math::
        \bar\mu_j = \bar\mu_{j-1} + \frac{1}{j}(\mu_j - \bar\mu_{j-1}),\qquad
        \bar\sigma^2_j = \bar\sigma^2_{j-1} + \frac{1}{j}(\sigma^2_j - \bar\sigma^2_{j-1})

    (in the form :math:`(1 - \frac1j)\bar\mu_{j-1} + \frac1j \mu_j`), with
    :math:`\mu_j` and the unbiased :math:`\sigma^2_j` the statistics of batch
    ``j``. fdl's layers are immutable, so instead of switching their momentum
    to ``None`` each batch is run from a zero state, which yields
    ``f · (batch statistic)`` for the layers' own factor ``f``: ``momentum``
    must be the one the BatchNorm layers were built with (torch's default 0.1;
    ``None`` for layers built with ``momentum=None``, where ``f = 1``).

    Args:
        apply_fn: ``(params, x, state) -> (output, new_state)`` in training
            mode, e.g. ``lambda p, x, s: model.apply(p, x, state=s, train=True)``.
        params: the params to compute statistics for (the averaged ones).
        bn_state: the model's state; its BatchNorm entries are replaced,
            anything else is passed through.
        batches: an iterable of inputs, or of ``(inputs, ...)`` tuples.
        momentum: the layers' momentum.

    Returns:
        The new state (pure: ``bn_state`` is not modified). With no batches,
        the reset statistics.

    Example:
        >>> import torch, fdl
        >>> bn = fdl.nn.BatchNorm1d(2)
        >>> apply = lambda p, x, s: bn.apply(p, x, state=s, train=True)
        >>> xs = [torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[4.0, 5.0], [6.0, 7.0]])]
        >>> state = update_bn(apply, bn.init(), bn.init_state(), xs)
        >>> state["running_mean"], state["running_var"], int(state["num_batches_tracked"])
        (tensor([3., 4.]), tensor([2., 2.]), 2)
    """
    if momentum is not None and not momentum > 0:
        raise ValueError(f"update_bn: momentum must be positive or None; got {momentum}")

    def reset(entry: dict) -> dict:
        return {
            "running_mean": torch.zeros_like(entry["running_mean"]),
            "running_var": torch.ones_like(entry["running_var"]),
            "num_batches_tracked": torch.zeros_like(entry["num_batches_tracked"]),
        }

    def zero(entry: dict) -> dict:
        return {
            "running_mean": torch.zeros_like(entry["running_mean"]),
            "running_var": torch.zeros_like(entry["running_var"]),
            "num_batches_tracked": torch.zeros_like(entry["num_batches_tracked"]),
        }

    state = _map_bn(reset, bn_state)
    if not _bn_entries(state):
        return state
    probe = _map_bn(zero, bn_state)
    for batch in batches:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        with torch.no_grad():
            _, out = apply_fn(params, x, probe)
        got = _bn_entries(out)
        current = _bn_entries(state)
        new_entries = {}
        for path, acc in current.items():
            if path not in got:
                raise ValueError(f"update_bn: apply_fn returned no BatchNorm state at {path!r}")
            mean, var = got[path]["running_mean"], got[path]["running_var"]
            if momentum is not None:  # a zero state after one batch holds f * statistic
                mean, var = mean / momentum, var / momentum
            tracked = acc["num_batches_tracked"] + 1
            f = 1.0 / tracked.to(acc["running_mean"].dtype)
            new_entries[path] = {
                "running_mean": (1 - f) * acc["running_mean"] + f * mean,
                "running_var": (1 - f) * acc["running_var"] + f * var,
                "num_batches_tracked": tracked,
            }
        state = _replace_entries(state, new_entries)
    return state


def _replace_entries(state: Any, entries: dict[str, dict], prefix: str = "") -> Any:
    if _is_bn(state):
        return entries[prefix]
    if isinstance(state, dict):
        return {
            k: _replace_entries(v, entries, f"{prefix}.{k}" if prefix else str(k))
            for k, v in state.items()
        }
    return state
