"""The one way fdl compiles a step: ``compile=`` options, a fresh code object, ``torch.compile``.

Every step builder (:func:`fdl.train.make_train_step`, :func:`fdl.train.make_eval_step`,
:func:`fdl.optim.make_update`, :func:`fdl.privacy.make_dp_train_step`,
:func:`fdl.ensemble.make_ensemble_train_step`) takes one ``compile`` argument
(:data:`CompileArg`):

* ``False``: the step runs eagerly;
* ``True``: ``torch.compile(step, fullgraph=True)``;
* a mapping: keyword arguments for ``torch.compile`` (``fullgraph`` defaults to
  ``True``), e.g. ``{"backend": "aot_eager"}`` or ``{"mode": "max-autotune"}``.

``torch.compile`` keeps its compiled graphs on the function's code object, so
steps built by repeated calls of one factory would share one cache and one
recompile limit. It also keeps, per function identity (file, first line, name),
which input sizes it has seen change ("automatic dynamic" shapes): a step built
for one model would then compile the next model's step with dynamic sizes from
its first call, and such a graph can guard on details that change between calls
(the ``_base`` of a view input: the parameters from ``init`` can be views, the
step's outputs are not), so its second call recompiles. :func:`maybe_compile`
compiles a copy with its own code object and its own name (:func:`fresh_function`),
so every built step has a cache and a shape history of its own.

Example:
    >>> from fdl._compile import maybe_compile
    >>> step = maybe_compile(lambda x: x + 1, False)
    >>> step(1)
    2
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["CompileArg", "compile_options", "fresh_function", "maybe_compile"]

CompileArg = bool | Mapping[str, Any]

# numbers the copies' code names (``step`` -> ``step_fdl3``): dynamo's automatic-dynamic
# state is keyed by (file, first line, code name), so each copy needs a name of its own
_COPIES = itertools.count(1)


def fresh_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object and code name.

    The code object holds the copy's ``torch.compile`` cache and recompile limit; the
    code name (``fn``'s with a number appended, e.g. ``step_fdl3``; ``__name__`` and
    ``__qualname__`` stay ``fn``'s) keys dynamo's record of which input sizes changed,
    so no other copy's calls make this one's sizes dynamic.

    Example:
        >>> f = lambda x: x
        >>> g = fresh_function(f)
        >>> g.__code__ is f.__code__, g.__code__.co_name == f.__code__.co_name, g.__name__
        (False, False, '<lambda>')
    """
    name = f"{fn.__code__.co_name}_fdl{next(_COPIES)}"
    code = fn.__code__.replace(co_name=name)
    out = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    out.__qualname__, out.__doc__ = fn.__qualname__, fn.__doc__
    out.__kwdefaults__ = fn.__kwdefaults__
    return out


def compile_options(compile: CompileArg, **aliases: Any) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments for a ``compile=`` argument, or ``None`` for eager.

    ``aliases`` are older spellings of single options (``backend=``, ``mode=``);
    the ones that are not ``None`` are merged into the options (an explicit
    entry in a ``compile`` mapping wins).

    Raises:
        TypeError: ``compile`` is neither a bool nor a mapping.

    Example:
        >>> compile_options(True, backend="aot_eager")
        {'backend': 'aot_eager', 'fullgraph': True}
        >>> compile_options(False) is None
        True
    """
    if compile is False:
        return None
    if compile is True:
        options: dict[str, Any] = {}
    elif isinstance(compile, Mapping):
        options = dict(compile)
    else:
        raise TypeError(
            "compile must be a bool or a dict of torch.compile options, "
            f"got {type(compile).__name__}"
        )
    for name, value in aliases.items():
        if value is not None:
            options.setdefault(name, value)
    options.setdefault("fullgraph", True)
    return options


def maybe_compile(
    fn: Callable[..., Any], compile: CompileArg, **aliases: Any
) -> Callable[..., Any]:
    """``fn`` itself when ``compile`` is false, else a fresh copy under ``torch.compile``.

    Args:
        fn: the step function.
        compile: see :data:`CompileArg`.
        aliases: single options in an older spelling (see :func:`compile_options`).

    Returns:
        The step, eager or compiled.
    """
    options = compile_options(compile, **aliases)
    if options is None:
        return fn
    return torch.compile(fresh_function(fn), **options)
