"""Griffe extension for the API reference: read fdl's docstrings as the library writes them.

* ``Example:`` (singular) opens an examples section, as ``Examples:`` does, so the
  doctest lines in it render as Python code instead of Markdown (where
  ``params["fc"]["weight"]`` would read as a reference link).
* An ``Args:`` section written in prose (its first line names no argument, e.g.
  "The constructor arguments of ``torch.nn.MaxPool2d``") is shown as a note
  titled "Arguments" instead of failing to parse as a parameter list.
"""

from __future__ import annotations

import re
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
