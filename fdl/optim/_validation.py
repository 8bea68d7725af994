"""Checks of an optimizer's inputs: once per top-level call, eagerly, naming every leaf.

The outermost ``update`` of a call (a ``chain``, or a block used on its own)
checks the gradients against the params and the state against the state the
optimizer's ``init`` builds for those params; everything it runs inside sees
:func:`needed` return ``False`` and skips its own checks, so nested chains and
blocks are not re-validated at every level. Nothing runs while
``torch.compile`` traces (``fdl._eager.validating()``): a compiled step is first
called eagerly, or its shapes surface as kernel errors.

Messages name the full dotted path of every differing leaf
(``'fc2.bias' is missing from the gradients``), through
:func:`fdl.tree.check_match`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import torch

from fdl import _eager, tree

__all__ = [
    "ExpectedState",
    "checked",
    "check_state_type",
    "check_tree",
    "checking_state",
    "describe",
    "needed",
]

_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("fdl_optim_checked", default=False)


def needed() -> bool:
    """True when this call must validate: eager, and no enclosing call has validated."""
    return _eager.validating() and not _CHECKED.get()


@contextlib.contextmanager
def checked() -> Iterator[None]:
    """Everything run inside trusts the inputs an enclosing call has validated."""
    token = _CHECKED.set(True)
    try:
        yield
    finally:
        _CHECKED.reset(token)


def check_tree(got: Any, expected: Any, *, got_name: str, expected_name: str, context: str) -> None:
    """Raise ``ValueError`` naming every leaf where ``got`` differs from ``expected``.

    Structure and tensor shapes are compared; the per-leaf walk that builds the
    message runs only when something differs.
    """
    g_lv, g_def = tree.flatten(got)
    e_lv, e_def = tree.flatten(expected)
    if g_def == e_def and all(
        not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape == b.shape
        for a, b in zip(g_lv, e_lv, strict=True)
    ):
        return
    tree.check_match(
        got,
        expected,
        got_name=got_name,
        expected_name=expected_name,
        check_shapes=True,
        context=context,
    )
    raise ValueError(f"{context}: {got_name} does not match {expected_name}")


def describe(state: Any) -> str:
    """A short name for a state: its class, or the tuple of its parts' classes."""
    if isinstance(state, tuple) and not hasattr(state, "_fields"):
        return "(" + ", ".join(describe(s) for s in state) + ")"
    return type(state).__name__


def check_state_type(state: Any, cls: type, who: str) -> None:
    """Raise ``ValueError`` unless ``state`` is the ``cls`` that ``who``'s init builds."""
    if not isinstance(state, cls) and not (cls.__name__ == "EmptyState" and state == ()):
        raise ValueError(
            f"{who}.update: the state is a {describe(state)}, expected the {cls.__name__} "
            f"that {who}.init builds (was it made by another optimizer?)"
        )


def checking_state(state: Any, cls: type, who: str) -> bool:
    """:func:`needed`; when it is True, the state's type is checked first (``check_state_type``)."""
    if not needed():
        return False
    check_state_type(state, cls, who)
    return True


class ExpectedState:
    """The state ``init`` builds for a params tree, built on the meta device and cached.

    Keyed by the params' structure and shapes; ``init`` runs on meta tensors, so
    nothing is allocated. ``None`` when ``init`` cannot run on meta tensors.
    """

    def __init__(self, init: Callable[[Any], Any]) -> None:
        self._init = init
        self._key: Any = None
        self._state: Any = None

    def __call__(self, params: Any) -> Any:
        lv, treedef = tree.flatten(params)
        key = (treedef, tuple(getattr(x, "shape", None) for x in lv))
        if key != self._key:
            meta = [
                torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x for x in lv
            ]
            try:
                state = self._init(tree.unflatten(treedef, meta))
            except Exception:  # an init that reads values: only the caller's checks apply
                state = None
            self._key, self._state = key, state
        return self._state
