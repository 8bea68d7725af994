"""Griffe extension for the API reference: read fdl's docstrings as the library writes them.

* ``Example:`` (singular) opens an examples section, as ``Examples:`` does, so the
  doctest lines in it render as Python code instead of Markdown (where
  ``params["fc"]["weight"]`` would read as a reference link).
* An ``Args:`` section written in prose (its first line names no argument, e.g.
  "The constructor arguments of ``torch.nn.MaxPool2d``") is shown as a note
  titled "Arguments" instead of failing to parse as a parameter list.
* A public function made by a factory (``dropout2d = _dropout_fn(...)``), which the static
  reading sees as a plain attribute without a docstring, is read from the imported module
  instead, so it is shown with its signature and docstring like a ``def``.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.M)
_ARGS = re.compile(r"^(?P<indent>[ \t]*)Args:[ \t]*\n(?P<first>[^\n]*)", re.M)
_ITEM = re.compile(r"^\s*\*{0,2}[A-Za-z_][A-Za-z0-9_]*(\s*\(.*\))?\s*:")


def _retitle_args(match: re.Match[str]) -> str:
    if _ITEM.match(match["first"]):
        return match[0]
    return f"{match['indent']}Arguments described in prose:\n{match['first']}"


class FdlDocstrings(griffe.Extension):
    """Rewrite the two docstring habits above before griffe parses a docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        value = _EXAMPLE.sub(r"\g<indent>Examples:", obj.docstring.value)
        obj.docstring.value = _ARGS.sub(_retitle_args, value)

    def on_module_members(self, *, mod: griffe.Module, agent: Any, **kwargs: Any) -> None:
        if not isinstance(agent, griffe.Visitor):
            return
        module = _runtime_module(mod)
        if module is None:
            return
        made: griffe.Module | None = None
        for name, member in list(mod.members.items()):
            if member.is_alias or not member.is_attribute or member.docstring is not None:
                continue
            obj = getattr(module, name, None)
            if not (inspect.isfunction(obj) and obj.__module__ == mod.path and obj.__doc__):
                continue
            if made is None:
                made = griffe.inspect(
                    mod.path,
                    docstring_parser=agent.docstring_parser,
                    docstring_options=agent.docstring_options,
                )
            function = made[name]
            function.lineno, function.endlineno = member.lineno, member.endlineno
            mod.set_member(name, function)


def _runtime_module(mod: griffe.Module) -> Any:
    """The imported module of the file griffe read (its tree first on ``sys.path``), or None.

    None where the module cannot be imported here, or where the import finds another copy
    of the package (an installed one), whose functions would not be this tree's.
    """
    filepath = mod.filepath
    if not isinstance(filepath, Path):
        return None
    root = filepath.parents[mod.path.count(".") + (filepath.name == "__init__.py")]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(mod.path)
    except Exception:  # not importable here: keep the static reading
        return None
    file = getattr(module, "__file__", None)
    return module if file is not None and Path(file).resolve() == filepath.resolve() else None
