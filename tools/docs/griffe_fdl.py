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
* A docstring with a placeholder line (``{reduction_args}``, filled when the module is
  imported by ``fdl._loss_common.fill_doc``) is read from the imported function, as filled.

``LayerSignatures`` gives every ``fdl.nn`` layer its constructor signature: the layer base
makes each subclass a frozen dataclass when the class is created, which a static reading of
the source does not see (no ``@dataclass`` line), so the signature is read from the
imported class.
"""

from __future__ import annotations

import dataclasses
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
_PLACEHOLDER = re.compile(r"^[ \t]*\{\w+(:[^}\n]*)?\}[ \t]*$", re.M)


def _retitle_args(match: re.Match[str]) -> str:
    if _ITEM.match(match["first"]):
        return match[0]
    return f"{match['indent']}Arguments described in prose:\n{match['first']}"


def _rewrite(value: str) -> str:
    value = _EXAMPLE.sub(r"\g<indent>Examples:", value)
    return _ARGS.sub(_retitle_args, value)


class FdlDocstrings(griffe.Extension):
    """Rewrite the docstring habits above before griffe parses a docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        obj.docstring.value = _rewrite(obj.docstring.value)

    def on_module_members(self, *, mod: griffe.Module, agent: Any, **kwargs: Any) -> None:
        if not isinstance(agent, griffe.Visitor):
            return
        module = _runtime_module(mod)
        if module is None:
            return
        made: griffe.Module | None = None
        for name, member in list(mod.members.items()):
            if member.is_alias:
                continue
            if member.docstring is not None and _PLACEHOLDER.search(member.docstring.value):
                filled = getattr(getattr(module, name, None), "__doc__", None)
                if filled:
                    member.docstring.value = _rewrite(inspect.cleandoc(filled))
                continue
            if not member.is_attribute or member.docstring is not None:
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
            if function.docstring is not None:  # as for a def (on_instance)
                function.docstring.value = _rewrite(function.docstring.value)
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


def _classes(obj: griffe.Object, seen: set[str]) -> Any:
    """Every class defined under ``obj`` (aliases skipped), each once."""
    if obj.path in seen:
        return
    seen.add(obj.path)
    for member in list(obj.members.values()):
        if not member.is_alias and (member.is_class or member.is_module):
            yield from _classes(member, seen)
    if obj.is_class:
        yield obj


def _parameter(p: inspect.Parameter) -> griffe.Parameter:
    annotation = None if p.annotation is p.empty else p.annotation
    if annotation is not None and not isinstance(annotation, str):
        annotation = inspect.formatannotation(annotation)
    return griffe.Parameter(
        p.name,
        annotation=annotation,
        kind=griffe.ParameterKind(p.kind.description),
        default=None if p.default is p.empty else repr(p.default),
    )


class LayerSignatures(griffe.Extension):
    """An ``__init__`` for every ``fdl.nn.Layer`` subclass that has none in its source."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "fdl":
            return
        nn = _runtime_module(pkg["nn"])  # this tree's fdl.nn, as for the factory-made functions
        if nn is None:
            return
        for cls in _classes(pkg, set()):
            if "__init__" in cls.members or not cls.parent or not cls.parent.is_module:
                continue
            module = _runtime_module(cls.parent)
            runtime = None if module is None else getattr(module, cls.name, None)
            if not (
                isinstance(runtime, type)
                and issubclass(runtime, nn.Layer)
                and dataclasses.is_dataclass(runtime)
            ):
                continue
            params = [_parameter(p) for p in inspect.signature(runtime).parameters.values()]
            self_ = griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)
            init = griffe.Function(
                "__init__",
                lineno=cls.lineno,
                endlineno=cls.lineno,
                parameters=griffe.Parameters(self_, *params),
                returns="None",
            )
            cls.set_member("__init__", init)
