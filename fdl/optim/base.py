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

from fdl import tree
from fdl.optim import _foreach

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
    "identity",
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


def identity() -> GradientTransformation:
    """The transformation that returns the updates unchanged."""

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None
    ) -> tuple[Updates, EmptyState]:
        del params
        return updates, state

    return GradientTransformation(init, update)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Compose transformations left to right; the state is the tuple of their states.

    Example:
        >>> import torch, fdl
        >>> tx = fdl.optim.chain(fdl.optim.clip(1.0), fdl.optim.scale_by_learning_rate(0.5))
        >>> params = {"w": torch.zeros(2)}
        >>> u, _ = tx.update({"w": torch.tensor([4.0, -0.5])}, tx.init(params), params)
        >>> u["w"]
        tensor([-0.5000,  0.2500])
    """
    for i, t in enumerate(transforms):
        if not isinstance(t, GradientTransformation):
            raise TypeError(
                f"chain expects GradientTransformation arguments; argument {i} is "
                f"{type(t).__name__}"
            )

    def init(params: Params) -> tuple[State, ...]:
        return tuple(t.init(params) for t in transforms)

    def update(
        updates: Updates, state: tuple[State, ...], params: Params | None = None
    ) -> tuple[Updates, tuple[State, ...]]:
        if not isinstance(state, tuple) or len(state) != len(transforms):
            got = len(state) if isinstance(state, tuple) else type(state).__name__
            raise ValueError(
                f"chain state must be a tuple of {len(transforms)} states (one per "
                f"transformation); got {got}"
            )
        new_state = []
        with _foreach.fresh_scope():
            for t, s in zip(transforms, state, strict=True):
                updates, s = t.update(updates, s, params)
                _foreach.unmark(s)  # a buffer kept in a state is never overwritten
                new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init, update)


def apply_updates(params: Params, updates: Updates) -> Params:
    r"""Return ``params + updates`` leafwise (pure: nothing is modified).

    :math:`\theta' = \theta + u`, each result in its parameter's dtype.

    Raises:
        ValueError: if the two trees differ in structure (the message names
            the first differing path).

    Example:
        >>> import torch
        >>> apply_updates({"w": torch.ones(2)}, {"w": torch.tensor([0.5, -1.0])})
        {'w': tensor([1.5000, 0.0000])}
    """
    p_leaves, treedef = tree.flatten(params)
    u_leaves, u_def = tree.flatten(updates)
    if u_def != treedef:
        tree.assert_same_structure(params, updates, names=("params", "updates"))
    return tree.unflatten(treedef, _foreach.add_cast(p_leaves, u_leaves))


# ---------------------------------------------------------------------------
# helpers shared by the blocks
# ---------------------------------------------------------------------------


def _flatten_updates(
    updates: Updates, params: Params | None, *, needs_params: bool = False, who: str = ""
) -> tuple[list[torch.Tensor], Any, list[torch.Tensor] | None]:
    """Flatten ``updates`` (and ``params``), checking that their structures agree."""
    u_leaves, treedef = tree.flatten(updates)
    if params is None:
        if needs_params:
            raise ValueError(f"{who} needs params: call update(updates, state, params)")
        return u_leaves, treedef, None
    p_leaves, p_def = tree.flatten(params)
    if p_def != treedef:
        tree.assert_same_structure(updates, params, names=("updates", "params"))
    return u_leaves, treedef, p_leaves


def _state_leaves(subtree: Any, treedef: Any, updates: Updates, name: str) -> list[torch.Tensor]:
    """Leaves of a state tree, checking it has the structure of ``updates``."""
    lv, d = tree.flatten(subtree)
    if d != treedef:
        tree.assert_same_structure(updates, subtree, names=("updates", name))
    return lv


def _zero_count(params: Params) -> torch.Tensor:
    """A zero int64 step count on the device of the first parameter."""
    lv = tree.leaves(params)
    device = lv[0].device if lv and isinstance(lv[0], torch.Tensor) else None
    return torch.zeros((), dtype=torch.int64, device=device)
