"""Wrappers and combinators: masking, zeroing, freezing, gradient accumulation, skipping bad steps.

Each takes an inner transformation (or builds one) and decides per leaf or per
step whether its update applies. Choices made on a step's values are
``torch.where`` on scalar tensors, so a wrapped step still compiles into one graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fdl import tree
from fdl.optim import _common as C
from fdl.optim import _foreach as F
from fdl.optim.base import GradientTransformation, Params, Updates

__all__ = [
    "ApplyIfFiniteState",
    "MaskedState",
    "MultiStepsState",
    "apply_if_finite",
    "freeze",
    "masked",
    "multi_steps",
    "set_to_zero",
]

Tensor = torch.Tensor


def _is_none(x: Any) -> bool:
    return x is None


class MaskedState(NamedTuple):
    """State of :func:`masked`: the inner state, built on the masked-in leaves only."""

    inner_state: Any


def _mask_leaves(t: Any, mask: Any, what: str) -> tuple[list[Any], Any, list[bool]]:
    """Flatten ``t`` (``None`` kept as leaves) and the boolean ``mask`` of its structure."""
    mask = mask(t) if callable(mask) else mask
    lv, treedef = tree.flatten(t, is_leaf=_is_none)
    m_lv, m_def = tree.flatten(mask, is_leaf=_is_none)
    if m_def != treedef:
        tree.check_match(
            mask, t, got_name="the mask", expected_name=f"the {what}", context="masked"
        )
        tree.assert_same_structure(t, mask, names=(what, "mask"))
    for path, m in zip(tree.paths(mask), tree.leaves(mask), strict=False):
        if not isinstance(m, bool):
            raise TypeError(f"mask leaves must be Python bools; got {type(m).__name__} at '{path}'")
    return lv, treedef, m_lv


def masked(
    inner: GradientTransformation, mask: Any | Callable[[Params], Any]
) -> GradientTransformation:
    r"""Apply ``inner`` only to the leaves where ``mask`` is ``True``; pass the others through.

    :math:`u_i = \text{inner}(g)_i` where ``mask[i]``, else :math:`u_i = g_i`. The
    inner transformation sees a tree whose masked-out leaves are ``None``, so its
    state holds nothing for them.

    Args:
        inner: the transformation to apply.
        mask: a tree of Python bools with the params' structure, or a function of
            the params (or of the updates when no params are given) returning one.

    Returns:
        A transformation with :class:`MaskedState`.

    Example:
        >>> import torch, fdl
        >>> tx = masked(fdl.optim.scale(0.0), {"w": True, "b": False})
        >>> p = {"w": torch.ones(1), "b": torch.ones(1)}
        >>> tx.update(p, tx.init(p), p)[0]
        {'w': tensor([0.]), 'b': tensor([1.])}
    """

    def init(params: Params) -> MaskedState:
        lv, treedef, m = _mask_leaves(params, mask, "params")
        return MaskedState(inner.init(tree.unflatten(treedef, _select(lv, m))))

    def update(
        updates: Updates, state: MaskedState, params: Params | None = None
    ) -> tuple[Updates, MaskedState]:
        C.leaves_of(updates, params, who="masked", state=state, state_type=MaskedState)
        u, treedef, m = _mask_leaves(
            updates, mask if params is None else _resolved(mask, params), "updates"
        )
        masked_params = None
        if params is not None:
            p, _ = tree.flatten(params, is_leaf=_is_none)
            masked_params = tree.unflatten(treedef, _select(p, m))
        new_u, inner_state = inner.update(
            tree.unflatten(treedef, _select(u, m)), state.inner_state, masked_params
        )
        new_lv, _ = tree.flatten(new_u, is_leaf=_is_none)
        merged = [n if keep else old for n, old, keep in zip(new_lv, u, m, strict=True)]
        return tree.unflatten(treedef, merged), MaskedState(inner_state)

    return GradientTransformation(init, update)


def _resolved(mask: Any, params: Params) -> Any:
    return mask(params) if callable(mask) else mask


def _select(lv: list[Any], m: list[bool]) -> list[Any]:
    return [x if keep else None for x, keep in zip(lv, m, strict=True)]


def set_to_zero() -> GradientTransformation:
    r"""Replace the updates by zeros: :math:`u = 0`.

    Example:
        >>> import torch
        >>> tx = set_to_zero()
        >>> tx.update({"w": torch.ones(2)}, tx.init(None))[0]
        {'w': tensor([0., 0.])}
    """
    return C.stateless("set_to_zero", lambda g, p: [torch.zeros_like(x) for x in g])


def freeze(mask: Any | Callable[[Params], Any]) -> GradientTransformation:
    r"""Zero the updates of the leaves where ``mask`` is ``True`` (those parameters stay fixed).

    ``freeze(mask) = masked(set_to_zero(), mask)``; chain it after the optimizer.

    Example:
        >>> import torch
        >>> tx = freeze({"w": True, "b": False})
        >>> p = {"w": torch.ones(1), "b": torch.ones(1)}
        >>> tx.update(p, tx.init(p), p)[0]
        {'w': tensor([0.]), 'b': tensor([1.])}
    """
    return masked(set_to_zero(), mask)


class MultiStepsState(NamedTuple):
    """State of :func:`multi_steps`: micro-step within the current accumulation,
    number of inner updates applied, the inner state, and the gradient sum."""

    mini_step: Tensor
    gradient_step: Tensor
    inner_state: Any
    acc_grads: Any


def multi_steps(inner: GradientTransformation, every_k_schedule: int) -> GradientTransformation:
    r"""Accumulate gradients over ``k = every_k_schedule`` calls, then apply ``inner`` once.

    .. math::
        A \leftarrow A + g; \qquad
        u = \begin{cases} \text{inner}(A / k) & \text{on the } k\text{-th call} \\
        0 & \text{otherwise}\end{cases}

    The same as calling ``loss.backward()`` on ``loss / k`` for k micro-batches and
    stepping a torch optimizer once (up to rounding: fdl sums, then divides). The
    choice is a ``torch.where`` on a scalar tensor so the step compiles into one
    graph; the inner update is therefore computed on every call.

    Args:
        inner: the optimizer to apply every k calls.
        every_k_schedule: ``k`` (a positive int).

    Returns:
        A transformation with :class:`MultiStepsState`.

    Example:
        >>> import torch, fdl
        >>> tx = multi_steps(fdl.optim.sgd(lr=1.0), every_k_schedule=2)
        >>> p = {"w": torch.zeros(1)}
        >>> s = tx.init(p)
        >>> u, s = tx.update({"w": torch.tensor([1.0])}, s, p)
        >>> u["w"]
        tensor([0.])
        >>> u, s = tx.update({"w": torch.tensor([3.0])}, s, p)
        >>> u["w"]
        tensor([-2.])
    """
    if not isinstance(every_k_schedule, int) or every_k_schedule < 1:
        raise ValueError(f"every_k_schedule must be a positive int; got {every_k_schedule!r}")
    k = every_k_schedule

    def init(params: Params) -> MultiStepsState:
        count = C.zero_count(params)
        return MultiStepsState(count, count.clone(), inner.init(params), tree.zeros_like(params))

    def update(
        updates: Updates, state: MultiStepsState, params: Params | None = None
    ) -> tuple[Updates, MultiStepsState]:
        g, treedef, _ = C.leaves_of(
            updates, params, who="multi_steps", state=state, state_type=MultiStepsState
        )
        acc = F.add(
            C.state_leaves(state.acc_grads, treedef, updates, "acc_grads", "multi_steps"), g
        )
        emit = state.mini_step + 1 >= k
        new_u, new_inner = inner.update(
            tree.unflatten(treedef, F.scale(acc, 1.0 / k)), state.inner_state, params
        )
        out = F.where_zero(emit, tree.leaves(new_u))
        inner_state = tree.map(lambda a, b: torch.where(emit, a, b), new_inner, state.inner_state)
        acc = F.where_zero(~emit, acc)
        return tree.unflatten(treedef, out), MultiStepsState(
            torch.where(emit, 0, state.mini_step + 1),
            state.gradient_step + emit.to(state.gradient_step.dtype),
            inner_state,
            tree.unflatten(treedef, acc),
        )

    return GradientTransformation(init, update)


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`: consecutive and total non-finite steps, whether
    the last step was finite, and the inner state."""

    notfinite_count: Tensor
    last_finite: Tensor
    total_notfinite: Tensor
    inner_state: Any


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int | None = None
) -> GradientTransformation:
    r"""Skip steps whose gradients hold a NaN or inf: zero updates, inner state unchanged.

    With ``ok = all(isfinite(g))``: :math:`u = \text{inner}(g)` and the inner
    state advances when ``ok``; otherwise :math:`u = 0` and the inner state is
    kept. After more than ``max_consecutive_errors`` bad steps in a row the
    update is applied anyway (``None``: never). The choice is a ``torch.where``,
    so the step compiles into one graph.

    Returns:
        A transformation with :class:`ApplyIfFiniteState`.

    Example:
        >>> import torch, fdl
        >>> tx = apply_if_finite(fdl.optim.sgd(lr=1.0))
        >>> p = {"w": torch.zeros(1)}
        >>> u, s = tx.update({"w": torch.tensor([float("nan")])}, tx.init(p), p)
        >>> u["w"], s.total_notfinite
        (tensor([0.]), tensor(1))
    """

    def init(params: Params) -> ApplyIfFiniteState:
        count = C.zero_count(params)
        return ApplyIfFiniteState(
            count,
            torch.ones((), dtype=torch.bool, device=count.device),
            count.clone(),
            inner.init(params),
        )

    def update(
        updates: Updates, state: ApplyIfFiniteState, params: Params | None = None
    ) -> tuple[Updates, ApplyIfFiniteState]:
        _, treedef, _ = C.leaves_of(
            updates, params, who="apply_if_finite", state=state, state_type=ApplyIfFiniteState
        )
        ok = tree.all_finite(updates).to(state.last_finite.device)
        notfinite = torch.where(ok, 0, state.notfinite_count + 1)
        apply = ok if max_consecutive_errors is None else ok | (notfinite > max_consecutive_errors)
        new_u, new_inner = inner.update(updates, state.inner_state, params)
        out = F.where_zero(apply, tree.leaves(new_u))
        inner_state = tree.map(lambda a, b: torch.where(apply, a, b), new_inner, state.inner_state)
        return tree.unflatten(treedef, out), ApplyIfFiniteState(
            notfinite,
            ok,
            state.total_notfinite + (~ok).to(state.total_notfinite.dtype),
            inner_state,
        )

    return GradientTransformation(init, update)
