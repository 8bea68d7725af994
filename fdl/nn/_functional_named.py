"""Naming the public functions that a factory makes for a family (``dropout1d/2d/3d``, ...).

A family shares one signature and one body; its factory defines the function once and
:func:`named` gives each member the name and docstring a ``def`` of its own would have,
so ``help``, doctests and the API reference see one function per public name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

_F = TypeVar("_F", bound=Callable[..., object])


def named(fn: _F, name: str, doc: str) -> _F:
    """``fn`` with ``__name__``/``__qualname__`` ``name`` and ``__doc__`` ``doc``."""
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return fn
