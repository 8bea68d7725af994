"""Core optimizer types: ``GradientTransformation``, ``chain``, ``apply_updates``.

A gradient transformation is a pair of pure functions::

    state = tx.init(params)
    updates, state = tx.update(updates, state, params)

``update`` maps incoming updates (gradients at the start of a chain) to
outgoing updates and a new state; it never mutates its arguments. The final
updates are *added* to the parameters by :func:`apply_updates`: the sign flip
of gradient descent lives in :func:`fdl.optim.scale_by_learning_rate`.

State conventions: every state is a ``NamedTuple`` whose leaves are tensors.
Blocks that depend on the step number hold a ``count`` int64 scalar tensor (the
number of updates already applied), so a compiled update sees the same graph
at every step and never recompiles. Trees inside a state (``mu``, ``nu``, ...)
have the structure of the params.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch

from fdl import _eager, tree
from fdl.optim import _foreach, _reuse, _validation

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "Params",
    "Schedule",
    "ScalarOrSchedule",
    "State",
    "Updates",
    "apply_updates",
    "chain",
]

Params = Any
Updates = Any
State = Any


class Schedule(Protocol):
    """A learning-rate schedule: the step-count tensor in, the learning rate (a tensor) out."""

    def __call__(self, count: torch.Tensor) -> torch.Tensor: ...


ScalarOrSchedule = float | torch.Tensor | Schedule


class GradientTransformation(NamedTuple):
    """A pair of pure functions ``(init, update)``.

    ``init(params) -> state`` builds the initial state; ``update(updates, state,
    params=None) -> (updates, state)`` transforms the updates.

    Example:
        >>> import torch, fdl
        >>> tx = fdl.optim.sgd(lr=0.1)
        >>> params = {"w": torch.ones(2)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": torch.ones(2)}, state, params)
        >>> fdl.optim.apply_updates(params, updates)
        {'w': tensor([0.9000, 0.9000])}
    """

    init: Callable[[Params], State]
    update: Callable[..., tuple[Updates, State]]


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Compose transformations left to right; the state is the tuple of their states.

    The outermost ``update`` of a call checks its inputs once, eagerly: the
    gradients against the params, and the state against the one ``init`` builds
    for these params (its type and structure), naming every differing leaf by
    its dotted path. Nested chains and blocks then skip their own checks.

    Example:
        >>> import torch, fdl
        >>> tx = fdl.optim.chain(fdl.optim.clip(1.0), fdl.optim.scale_by_learning_rate(0.5))
        >>> params = {"w": torch.zeros(2)}
        >>> u, _ = tx.update({"w": torch.tensor([4.0, -0.5])}, tx.init(params), params)
        >>> u["w"]
        tensor([-0.5000,  0.2500])
    """
    return _chain(transforms, "chain")


def _chain(transforms: tuple[GradientTransformation, ...], name: str) -> GradientTransformation:
    """:func:`chain`, its messages naming the optimizer ``name`` (``"adam"``, ...)."""
    for i, t in enumerate(transforms):
        if not isinstance(t, GradientTransformation):
            raise TypeError(
                f"{name} expects GradientTransformation arguments; argument {i} is "
                f"{type(t).__name__}"
            )

    def init(params: Params) -> tuple[State, ...]:
        return tuple(t.init(params) for t in transforms)

    expected_state = _validation.ExpectedState(init)

    def run(updates: Updates, state: tuple[State, ...], params: Params | None) -> tuple:
        new_state = []
        with _reuse.scope():
            for t, s in zip(transforms, state, strict=True):
                updates, s = t.update(updates, s, params)
                _reuse.unmark(s)  # a buffer kept in a state is never overwritten
                new_state.append(s)
        return updates, tuple(new_state)

    def update(
        updates: Updates, state: tuple[State, ...], params: Params | None = None
    ) -> tuple[Updates, tuple[State, ...]]:
        if not _validation.needed():  # traced, or checked by an enclosing call
            return run(updates, state, params)
        _check_inputs(name, len(transforms), updates, state, params, expected_state)
        with _validation.checked():
            return run(updates, state, params)

    return GradientTransformation(init, update)


def _check_inputs(
    name: str,
    n: int,
    updates: Updates,
    state: Any,
    params: Params | None,
    expected_state: _validation.ExpectedState,
) -> None:
    """The checks of a top-level chain update (eager): gradients, then the state."""
    context = f"{name}.update"
    if params is not None:
        _validation.check_tree(
            updates, params, got_name="the gradients", expected_name="the params", context=context
        )
    expected = expected_state(params if params is not None else updates)
    if not isinstance(state, tuple) or len(state) != n:
        got = len(state) if isinstance(state, tuple) else type(state).__name__
        built = "" if expected is None else f" {_validation.describe(expected)}"
        raise ValueError(
            f"{context}: chain state must be a tuple of {n} states (one per "
            f"transformation); got {got}: the state is a {_validation.describe(state)}, "
            f"expected the state {name}.init(params) builds{built}"
        )
    if expected is None:
        return
    built = "params" if params is not None else "the updates (no params given)"
    _validation.check_tree(
        state,
        expected,
        got_name="the state",
        expected_name="the expected state",
        context=f"{context}: the state is a {_validation.describe(state)}, expected the "
        f"{_validation.describe(expected)} that {name}.init builds for {built}",
    )


def apply_updates(params: Params, updates: Updates) -> Params:
    r"""Return ``params + updates`` leafwise (pure: nothing is modified).

    :math:`\theta' = \theta + u`, each result in its parameter's dtype.

    Raises:
        ValueError: if the two trees differ in structure or shapes (eagerly; the
            message names the dotted path of every differing leaf).

    Example:
        >>> import torch
        >>> apply_updates({"w": torch.ones(2)}, {"w": torch.tensor([0.5, -1.0])})
        {'w': tensor([1.5000, 0.0000])}
    """
    p_leaves, treedef = tree.flatten(params)
    if _eager.validating():
        _validation.check_tree(
            updates,
            params,
            got_name="the updates",
            expected_name="the params",
            context="apply_updates",
        )
    return tree.unflatten(treedef, _foreach.add_in_dtype(p_leaves, tree.leaves(updates)))
