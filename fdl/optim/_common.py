"""What the building blocks share: leaves in and out, step counts, schedules, hyperparameter checks.

A block's ``update`` starts with :func:`leaves_of` (the flat updates, params and
state trees, validated once per top-level call by :mod:`fdl.optim._validation`)
and ends by rebuilding trees with the same ``treedef``. Blocks without state
are made by :func:`stateless` from a function of the leaf lists alone.

Hyperparameters are checked once, by the block that uses them, with one
message style (torch's ``Invalid <name> value: <value>``, plus the expected
range).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fdl import _eager, tree
from fdl.optim import _reuse, _validation
from fdl.optim.base import EmptyState, GradientTransformation, Params, Updates

Tensor = torch.Tensor
Leaves = list[Tensor]

__all__ = [
    "MomentsState",
    "check_lr",
    "check_nonneg",
    "check_unit_interval",
    "leafwise",
    "leaves_of",
    "nonzero_value",
    "per_leaf",
    "scheduled",
    "state_leaves",
    "stateful",
    "stateless",
    "step_number",
    "zero_count",
]


class MomentsState(NamedTuple):
    """The fields of a state with a first moment ``mu`` and one second statistic ``nu``.

    Public states of this layout subclass it (with ``__slots__ = ()``): each stays
    its own type, so a block still rejects another block's state.
    """

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    mu: Any
    nu: Any


# ---------------------------------------------------------------------------
# leaves in, trees out
# ---------------------------------------------------------------------------


def leaves_of(
    updates: Updates,
    params: Params | None,
    *,
    who: str,
    state: Any = None,
    state_type: type | None = None,
    needs_params: bool = False,
) -> tuple[Leaves, Any, Leaves | None]:
    """``(update leaves, treedef, param leaves or None)``, validating a block called on its own.

    Inside a validated call (a chain's update) the checks are skipped: the chain
    has already compared the gradients with the params and the state with the one
    its ``init`` builds.
    """
    u_leaves, treedef = tree.flatten(updates)
    if params is None and needs_params:
        raise ValueError(f"{who} needs params: call update(updates, state, params)")
    check = _validation.needed()
    if check and state_type is not None:
        _validation.check_state_type(state, state_type, who)
    if params is None:
        return u_leaves, treedef, None
    p_leaves = tree.leaves(params)
    if check:
        _validation.check_tree(
            updates, params, got_name="the updates", expected_name="the params", context=who
        )
    return u_leaves, treedef, p_leaves


def state_leaves(subtree: Any, treedef: Any, updates: Updates, name: str, who: str) -> Leaves:
    """Leaves of a state tree (``mu``, ``nu``, ...), which has the structure of the updates."""
    if _validation.needed():
        _validation.check_tree(
            subtree,
            updates,
            got_name=f"the state's {name}",
            expected_name="the updates",
            context=who,
        )
    return tree.leaves(subtree)


def zero_count(params: Params) -> Tensor:
    """A zero int64 step count on the device of the first parameter."""
    lv = tree.leaves(params)
    device = lv[0].device if lv and isinstance(lv[0], Tensor) else None
    return torch.zeros((), dtype=torch.int64, device=device)


def stateful(
    who: str,
    state_cls: type,
    step: Callable[..., tuple[Leaves, dict[str, Any]]],
    *,
    trees: tuple[str, ...],
    initial: Callable[[Params], dict[str, Any]] | None = None,
    hands_on_fresh: bool = False,
    with_params: bool = False,
    needs_params: bool = False,
) -> GradientTransformation:
    """A block whose state is ``state_cls(count, ...)``, made from its formula ``step``.

    ``step(g, state, **lists)`` receives the update leaves, the state, and the
    leaf lists of the per-leaf ``trees`` fields (``None`` stays ``None``); it
    returns ``(u, new)``: the new update leaves and the new values of every field
    but ``count`` (tree fields as leaf lists), which advances by itself.
    ``init`` gives ``count = 0``, zeros for each tree field, and the fields that
    ``initial(params)`` returns. With ``hands_on_fresh`` the block's updates are
    buffers it allocated and keeps nowhere, marked for reuse (``fdl.optim._reuse``).
    With ``with_params`` (implied by ``needs_params``) ``step`` also receives the
    param leaves as ``params`` (``None`` when ``update`` was given none); with
    ``needs_params``, ``update`` without params raises.
    """

    def init(params: Params) -> Any:
        fields = {name: tree.zeros_like(params) for name in trees}
        fields.update(initial(params) if initial is not None else {})
        return state_cls(count=zero_count(params), **fields)

    def update(updates: Updates, state: Any, params: Params | None = None) -> tuple[Updates, Any]:
        g, treedef, p = leaves_of(
            updates, params, who=who, state=state, state_type=state_cls, needs_params=needs_params
        )
        lists = {
            name: None
            if getattr(state, name) is None
            else state_leaves(getattr(state, name), treedef, updates, name, who)
            for name in trees
        }
        if with_params or needs_params:
            lists["params"] = p
        out, new = step(g, state, **lists)
        if hands_on_fresh:
            _reuse.mark(out)
        fields = {
            k: tree.unflatten(treedef, v) if k in trees and v is not None else v
            for k, v in new.items()
        }
        return tree.unflatten(treedef, out), state_cls(count=state.count + 1, **fields)

    return GradientTransformation(init, update)


def leafwise(
    rule: Callable[..., tuple[Tensor, ...]], g: Leaves, **fields: Leaves
) -> tuple[Leaves, dict[str, Leaves]]:
    """A :func:`stateful` step's ``(u, new)`` from a rule applied leaf by leaf.

    ``rule(g_i, *field_i)`` takes one update leaf and the matching leaf of each
    state field (in the order given) and returns ``(u_i, *new field_i)`` in that order.
    """
    rows = [rule(*leaf) for leaf in zip(g, *fields.values(), strict=True)]
    columns = [list(c) for c in zip(*rows, strict=True)] or [[] for _ in range(1 + len(fields))]
    return columns[0], dict(zip(fields, columns[1:], strict=True))


def per_leaf(rule: Callable[..., tuple[Tensor, ...]]) -> Callable[..., Any]:
    """A :func:`stateful` step that is ``rule`` applied leaf by leaf (:func:`leafwise`)."""

    def step(g: Leaves, state: Any, **fields: Leaves) -> tuple[Leaves, dict[str, Leaves]]:
        del state
        return leafwise(rule, g, **fields)

    return step


def stateless(
    who: str, fn: Callable[[Leaves, Leaves | None], Leaves], *, needs_params: bool = False
) -> GradientTransformation:
    """A block with :class:`~fdl.optim.EmptyState`: ``u = fn(g, θ)`` on the leaf lists."""

    def init(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None
    ) -> tuple[Updates, EmptyState]:
        g, treedef, p = leaves_of(
            updates, params, who=who, state=state, state_type=EmptyState, needs_params=needs_params
        )
        return tree.unflatten(treedef, fn(g, p)), state

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------
# step counts and schedules
# ---------------------------------------------------------------------------


def step_number(count: Tensor) -> Tensor:
    """The 1-based step number ``t = count + 1`` as a float64 scalar tensor."""
    return (count + 1).to(torch.float64)


def scheduled(value: Any, count: Tensor) -> Any:
    """A hyperparameter that may be a schedule: its value at ``count``.

    A float passes through. A schedule's value is a float64 tensor; eagerly it is
    read back as a Python float (unless it requires grad), so the eager
    ``foreach`` ops see exactly what torch's optimizers see (a number), while
    traced code and learned values keep the tensor (and never recompile).
    """
    if not callable(value):
        return value
    v = torch.as_tensor(value(count), dtype=torch.float64)
    if (
        torch.compiler.is_compiling()
        or torch._C._functorch.is_functorch_wrapped_tensor(v)
        or v.requires_grad  # a learned hyperparameter keeps its gradient
    ):
        return v
    return float(v)


# ---------------------------------------------------------------------------
# hyperparameter checks: one message style
# ---------------------------------------------------------------------------


def _unreadable(value: Tensor) -> bool:
    """True for a traced tensor (``torch.compile``, ``torch.func`` transforms): no value to read."""
    return not _eager.validating() or torch._C._functorch.is_functorch_wrapped_tensor(value)


def _number(name: str, value: Any, expected: str) -> float | None:
    if isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
        # a tensor hyperparameter (one that may be learned): its value is checked when it
        # can be read; traced (compiled, inside torch.func transforms) it is unchecked: None
        if _unreadable(value):
            return None
        return float(value.detach())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Invalid {name} value: {value!r} (expected {expected})")
    return float(value)


def nonzero_value(value: Any) -> bool:
    """True for a non-zero number or readable tensor; False for 0 and for a traced tensor."""
    if isinstance(value, Tensor):
        return not _unreadable(value) and bool(value.detach() != 0)
    return value != 0


def check_nonneg(name: str, value: Any) -> None:
    """``value >= 0``, else ``ValueError: Invalid <name> value: ...``."""
    v = _number(name, value, "a number >= 0")
    if v is not None and not v >= 0.0:
        raise ValueError(f"Invalid {name} value: {value} (expected >= 0)")


def check_unit_interval(name: str, value: Any, *, closed: bool = False) -> None:
    """``0 <= value < 1`` (``<= 1`` when ``closed``)."""
    bound = "[0, 1]" if closed else "[0, 1)"
    v = _number(name, value, f"a number in {bound}")
    if v is not None and not (0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0):
        raise ValueError(f"Invalid {name} value: {value} (expected a number in {bound})")


def check_lr(lr: Any) -> None:
    """A learning rate: a schedule, or a number / 1-element tensor ``>= 0`` (torch's messages)."""
    if callable(lr):
        return
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if _unreadable(lr):
            return  # a traced value (compiled, inside torch.func transforms): unchecked
        value = float(lr.detach())
    elif isinstance(lr, int | float) and not isinstance(lr, bool):
        value = float(lr)
    else:
        raise TypeError(
            f"lr must be a float, a 1-element tensor or a schedule; got {type(lr).__name__}"
        )
    if not 0.0 <= value:
        raise ValueError(f"Invalid learning rate: {lr} (expected >= 0)")
