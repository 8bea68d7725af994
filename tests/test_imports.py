"""The import graph of fdl: no package reaches into another's private names; one pytree module.

A *part* of fdl is a subpackage (``fdl/nn/``, ``fdl/optim/``, ...) or a
top-level module (``fdl/train.py``). A module may use any name of its own
part, and the public names of every other part; top-level internal modules
(``fdl/_compile.py``, ``fdl/_per_sample/``) are the sanctioned way to share
code, so importing them is allowed, but their ``_private`` names are not.
The package root ``fdl/__init__.py`` only assembles the public namespace and
is not a part. The walk is static (``ast``), so it sees every module without
importing any.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FDL = ROOT / "fdl"

# the only module allowed to import a pytree library directly
PYTREE_MODULE = "fdl.tree"
PYTREE_LIBRARIES = ("optree", "torch.utils._pytree")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(FDL.rglob("*.py"))}


MODULES = _modules()


def _where(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _part(module: str) -> str | None:
    """``fdl.nn.conv`` -> ``nn``; ``fdl.train`` -> ``train``; the root ``fdl`` -> ``None``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a (possibly relative) ``from`` import."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _private_reference(user: str, dotted: str) -> str | None:
    """Why ``user`` may not reference ``dotted`` (an ``fdl...`` name), or ``None`` if it may."""
    parts = dotted.split(".")
    if parts[0] != "fdl" or len(parts) < 2:
        return None
    if _part(user) in (None, parts[1]):
        return None
    # the part itself may be a sanctioned top-level internal module: skip its own name
    for name in parts[2:]:
        if _is_private(name):
            return f"{user} uses {dotted}: {name!r} is private to fdl.{parts[1]}"
    return None


def _violations(module: str, source: str, is_package: bool = False, where: str = "") -> list[str]:
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> the fdl module (or attribute) it is bound to
    found: list[str] = []

    def check(dotted: str, line: int) -> None:
        why = _private_reference(module, dotted)
        if why is not None:
            found.append(f"{where}:{line}: {why}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                check(a.name, node.lineno)
                if a.name.startswith("fdl"):
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else "fdl"
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, is_package, node.level, node.module)
            check(source, node.lineno)
            for a in node.names:
                if a.name == "*":
                    continue
                check(f"{source}.{a.name}", node.lineno)
                if source.startswith("fdl"):
                    aliases[a.asname or a.name] = f"{source}.{a.name}"
    # attribute chains on names bound to fdl modules: ``_data._check_arrays``, ``fdl.x._y``
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain: list[str] = []
            inner: ast.expr = node
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in aliases:
                check(".".join([aliases[inner.id], *reversed(chain)]), node.lineno)
    return sorted(set(found))


def _pytree_imports(source: str, where: str = "") -> list[str]:
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if any(name == lib or name.startswith(lib + ".") for lib in PYTREE_LIBRARIES):
                found.append(f"{where}:{node.lineno}: imports {name}")
    return found


def test_the_walk_sees_the_packages() -> None:
    # guards the test itself: an empty walk would pass vacuously
    for expected in ("fdl.train", "fdl.nn.conv", "fdl.optim.base", "fdl.privacy.dp_sgd"):
        assert expected in MODULES


@pytest.mark.parametrize(
    "user, dotted, allowed",
    [
        ("fdl.privacy.dp_sgd", "fdl.per_sample._core", False),
        ("fdl.ensemble", "fdl.train._maybe_compile", False),
        ("fdl.losses", "fdl.nn._functional_activations.log_softmax", False),
        ("fdl.train", "fdl._compile.maybe_compile", True),
        ("fdl.train", "fdl._compile._private_helper", False),
        ("fdl.nn.functional", "fdl.nn._functional_activations", True),
        ("fdl.optim.step", "fdl.optim.base.apply_updates", True),
        ("fdl.train", "fdl.data.__doc__", True),
    ],
)
def test_rule(user: str, dotted: str, allowed: bool) -> None:
    assert (_private_reference(user, dotted) is None) == allowed


# import statements that break the rules (each once seen in fdl), and the part they sat in
BAD_SOURCES = [
    ("fdl.privacy.dp_sgd", "from fdl.per_sample import _core\n"),
    ("fdl.ensemble", "from fdl.train import CompileArg, _maybe_compile\n"),
    ("fdl.train", "from fdl import data as _data\nn = _data._check_arrays([x, y])\n"),
    ("fdl.losses", "from fdl.nn._functional_activations import log_softmax\n"),
    ("fdl.privacy.dp_sgd", "import fdl.per_sample._core as core\n"),
    ("fdl.privacy.dp_sgd", "import fdl\nfdl.per_sample._core.decompose\n"),
    ("fdl.privacy.dp_sgd", "from ..per_sample import _core\n"),
]


@pytest.mark.parametrize("module, source", BAD_SOURCES)
def test_walk_finds_private_use(module: str, source: str) -> None:
    assert _violations(module, source), source


def test_walk_allows_own_part_and_public_names() -> None:
    ok = (
        "from fdl.per_sample import per_sample_grads\n"
        "from fdl._per_sample import core as _core\n"
        "from fdl import tree as _tree\n"
        "_tree.map(f, x)\n"
        "from . import _checks\n"
    )
    assert _violations("fdl.privacy.dp_sgd", ok) == []


@pytest.mark.parametrize(
    "source",
    [
        "import optree\n",
        "import torch.utils._pytree as p\n",
        "from torch.utils._pytree import tree_map\n",
    ],
)
def test_walk_finds_pytree_imports(source: str) -> None:
    assert _pytree_imports(source)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_imports_across_packages(module: str) -> None:
    path = MODULES[module]
    found = _violations(module, path.read_text(), path.name == "__init__.py", _where(path))
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_fdl_tree_imports_a_pytree_library(module: str) -> None:
    path = MODULES[module]
    found = _pytree_imports(path.read_text(), _where(path))
    if module == PYTREE_MODULE:
        assert found, "fdl.tree should import optree"
        return
    assert not found, "\n".join(found)
