"""Wrappers and combinators: masking, zeroing, freezing, gradient accumulation, skipping bad steps.

Each takes an inner transformation (or builds one) and decides per leaf or per
step whether its update applies. Choices made on a step's values are
``torch.where`` on scalar tensors, so a wrapped step still compiles into one graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fdl import _eager, tree
from fdl.optim import _common as C
from fdl.optim import _foreach as F
from fdl.optim.base import GradientTransformation, Params, Updates

__all__ = [
    "ApplyIfFiniteState",
    "MaskedState",
    "MultiSteps",
    "MultiStepsState",
    "apply_if_finite",
    "freeze",
    "masked",
    "multi_steps",
    "set_to_zero",
    "skip_large_updates",
    "skip_not_finite",
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
    """State of :func:`multi_steps` / :class:`MultiSteps`: micro-step within the current
    accumulation, number of inner updates applied, the inner state, the gradient sum,
    and what ``should_skip_update_fn`` last returned (``()`` without one)."""

    mini_step: Tensor
    gradient_step: Tensor
    inner_state: Any
    acc_grads: Any
    skip_state: Any = ()


ShouldSkipUpdateFunction = Callable[[Updates, Tensor, Params | None], tuple[Tensor, Any]]


def skip_not_finite(
    updates: Updates, gradient_step: Tensor, params: Params | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """A ``should_skip_update_fn`` for :class:`MultiSteps`: skip micro-steps holding NaN or inf.

    Returns ``(skip, {"should_skip": skip, "num_not_finite": n})`` with ``n`` the
    number of non-finite elements of ``updates``.

    Example:
        >>> import torch
        >>> skip_not_finite({"w": torch.tensor([1.0, float("inf")])}, torch.tensor(0), None)[0]
        tensor(True)
    """
    del gradient_step, params
    lv = tree.leaves(updates)
    n = sum((~torch.isfinite(x)).sum() for x in lv) if lv else torch.zeros((), dtype=torch.int64)
    n = torch.as_tensor(n)
    return n > 0, {"should_skip": n > 0, "num_not_finite": n}


def skip_large_updates(
    updates: Updates, gradient_step: Tensor, params: Params | None, max_squared_norm: float
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""A ``should_skip_update_fn`` for :class:`MultiSteps`: skip when :math:`\|g\|^2` is large.

    Skips unless :math:`\sum_i \|g_i\|^2 <` ``max_squared_norm`` (NaN skips); bind
    ``max_squared_norm`` with ``functools.partial``. Returns ``(skip,
    {"should_skip": skip, "norm_squared": n2})``.

    Example:
        >>> import torch
        >>> skip_large_updates({"w": torch.tensor([3.0, 4.0])}, torch.tensor(0), None, 20.0)[0]
        tensor(True)
    """
    del gradient_step, params
    n2 = tree.vdot(updates, updates)
    skip = ~(n2 < max_squared_norm)
    return skip, {"should_skip": skip, "norm_squared": n2}


def _no_skip(updates: Updates, gradient_step: Tensor, params: Params | None) -> tuple[Tensor, Any]:
    return torch.zeros((), dtype=torch.bool, device=gradient_step.device), ()


def multi_steps(
    inner: GradientTransformation,
    every_k_schedule: int | Callable[[Tensor], Any],
    use_grad_mean: bool = True,
    should_skip_update_fn: ShouldSkipUpdateFunction | None = None,
) -> GradientTransformation:
    r"""Accumulate gradients over ``k = every_k_schedule`` calls, then apply ``inner`` once.

    .. math::
        A \leftarrow A + g; \qquad
        u = \begin{cases} \text{inner}(A / k) & \text{on the } k\text{-th call} \\
        0 & \text{otherwise}\end{cases}

    (:math:`A` itself without ``use_grad_mean``). The same as calling
    ``loss.backward()`` on ``loss / k`` for k micro-batches and stepping a torch
    optimizer once (up to rounding: fdl sums, then divides). The choice is a
    ``torch.where`` on a scalar tensor so the step compiles into one graph; the
    inner update is therefore computed on every call.

    ``every_k_schedule`` may be a function of ``gradient_step`` (the number of
    inner updates applied so far) returning ``k``, to grow the effective batch
    over training; ``k`` is read once per accumulation. Under ``torch.compile``
    make it tensor-valued (``torch.where``), so that nothing recompiles.

    A micro-step for which ``should_skip_update_fn(updates, gradient_step,
    params)`` returns ``(True, info)`` is ignored (zero updates, state unchanged
    except ``skip_state = info``); see :func:`skip_not_finite` and
    :func:`skip_large_updates`.

    Args:
        inner: the optimizer to apply every k calls.
        every_k_schedule: ``k`` (a positive int), or a function of the int64
            ``gradient_step`` tensor returning it.
        use_grad_mean: pass the mean of the accumulated gradients (else their sum).
        should_skip_update_fn: decides per micro-step whether to ignore it.

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

    Note:
        Optax's ``MultiSteps`` keeps a running mean; fdl sums, then divides (the
        same up to rounding). The state's field is ``inner_state`` (Optax:
        ``inner_opt_state``).
    """
    if callable(every_k_schedule):
        schedule = every_k_schedule
    elif (
        isinstance(every_k_schedule, int)
        and not isinstance(every_k_schedule, bool)
        and every_k_schedule >= 1
    ):
        schedule = None
    else:
        raise ValueError(
            "every_k_schedule must be a positive int or a function of the gradient step; "
            f"got {every_k_schedule!r}"
        )
    skip_fn = _no_skip if should_skip_update_fn is None else should_skip_update_fn

    def init(params: Params) -> MultiStepsState:
        count = C.zero_count(params)
        state = MultiStepsState(count, count.clone(), inner.init(params), tree.zeros_like(params))
        if should_skip_update_fn is None:
            return state
        _, skip_state = skip_fn(tree.zeros_like(params), count, params)
        return state._replace(skip_state=skip_state)

    def update(
        updates: Updates, state: MultiStepsState, params: Params | None = None
    ) -> tuple[Updates, MultiStepsState]:
        g, treedef, _ = C.leaves_of(
            updates, params, who="multi_steps", state=state, state_type=MultiStepsState
        )
        acc = F.add(
            C.state_leaves(state.acc_grads, treedef, updates, "acc_grads", "multi_steps"), g
        )
        if schedule is None:
            k: Any = every_k_schedule
            mean = F.scale(acc, 1.0 / every_k_schedule) if use_grad_mean else acc
        else:
            k = torch.as_tensor(schedule(state.gradient_step))
            mean = F.scale(acc, 1.0 / k.to(torch.float64)) if use_grad_mean else acc
        emit = state.mini_step + 1 >= k
        new_u, new_inner = inner.update(tree.unflatten(treedef, mean), state.inner_state, params)
        out = F.where_zero(emit, tree.leaves(new_u))
        inner_state = tree.map(lambda a, b: torch.where(emit, a, b), new_inner, state.inner_state)
        acc = F.where_zero(~emit, acc)
        new_state = MultiStepsState(
            torch.where(emit, 0, state.mini_step + 1),
            state.gradient_step + emit.to(state.gradient_step.dtype),
            inner_state,
            tree.unflatten(treedef, acc),
        )
        if should_skip_update_fn is None:
            return tree.unflatten(treedef, out), new_state
        skip, skip_state = skip_fn(updates, state.gradient_step, params)
        if _eager.validating() and (
            not isinstance(skip, Tensor) or skip.dtype != torch.bool or skip.shape != ()
        ):
            raise ValueError(
                "multi_steps: should_skip_update_fn must return a boolean scalar tensor first; "
                f"got {skip!r}"
            )
        kept = tree.map(
            lambda a, b: torch.where(skip, b, a),
            new_state._replace(skip_state=()),
            state._replace(skip_state=()),
        )
        return tree.unflatten(treedef, F.where_zero(~skip, out)), kept._replace(
            skip_state=skip_state
        )

    return GradientTransformation(init, update)


class MultiSteps:
    """Optax's gradient-accumulation wrapper: :func:`multi_steps` as a class.

    ``MultiSteps(opt, every_k_schedule, use_grad_mean=True,
    should_skip_update_fn=None)`` has ``init``, ``update``, ``inner_opt``,
    :meth:`has_updated` and :meth:`gradient_transformation`; the formula and
    arguments are those of :func:`multi_steps`.

    Example:
        >>> import torch, fdl
        >>> ms = MultiSteps(fdl.optim.sgd(lr=1.0), every_k_schedule=2)
        >>> p = {"w": torch.zeros(1)}
        >>> s = ms.init(p)
        >>> _, s = ms.update({"w": torch.ones(1)}, s, p)
        >>> bool(ms.has_updated(s))
        False
        >>> u, s = ms.update({"w": torch.ones(1)}, s, p)
        >>> u["w"], bool(ms.has_updated(s))
        (tensor([-1.]), True)
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[Tensor], Any],
        use_grad_mean: bool = True,
        should_skip_update_fn: ShouldSkipUpdateFunction | None = None,
    ) -> None:
        self._opt = opt
        self._tx = multi_steps(opt, every_k_schedule, use_grad_mean, should_skip_update_fn)

    @property
    def inner_opt(self) -> GradientTransformation:
        """The wrapped optimizer."""
        return self._opt

    def init(self, params: Params) -> MultiStepsState:
        """The initial :class:`MultiStepsState`."""
        return self._tx.init(params)

    def update(
        self, updates: Updates, state: MultiStepsState, params: Params | None = None
    ) -> tuple[Updates, MultiStepsState]:
        """Accumulate ``updates``; every k-th call, the inner optimizer's update."""
        return self._tx.update(updates, state, params)

    def has_updated(self, state: MultiStepsState) -> Tensor:
        """Whether the last call applied the inner optimizer (a bool scalar tensor)."""
        return (state.mini_step == 0) & (state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformation:
        """The same as a :class:`~fdl.optim.GradientTransformation` (for ``chain``)."""
        return self._tx


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
