"""Naming the public functions that a factory makes for a family (``max_unpool1d/2d/3d``, ...).

A family shares one signature and one body. :func:`with_first` makes each member from one
function whose first argument tells the members apart (the number of spatial dimensions,
say); :func:`named` gives a function a factory made the name and docstring a ``def`` of
its own would have, so ``help``, ``inspect.signature``, doctests and the API reference see
one function per public name.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable
from typing import Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., object])
_R = TypeVar("_R")


def named(fn: _F, name: str, doc: str) -> _F:
    """``fn`` with ``__name__``/``__qualname__`` ``name`` and ``__doc__`` ``doc``."""
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc
    return fn


def with_first(impl: Callable[..., _R], first: Any, name: str, doc: str) -> Callable[..., _R]:
    """``impl`` with its first argument fixed to ``first``, as the public function ``name``.

    Its signature (``inspect.signature``, the API reference) is ``impl``'s without the first
    parameter, and it belongs to the module that calls ``with_first`` (it takes that module's
    globals, as a ``def`` there would), where doctest and the API reference look for it.
    """

    def forward(*args: Any, **kwargs: Any) -> _R:
        return impl(first, *args, **kwargs)

    code, closure = forward.__code__, forward.__closure__
    member = types.FunctionType(code, sys._getframe(1).f_globals, name, None, closure)
    signature = inspect.signature(impl)
    member.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values())[1:]
    )
    return named(member, name, doc)
