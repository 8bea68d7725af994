"""Pytree helpers: the one module in fdl that imports ``optree``.

A pytree is a nested structure of ``dict``, ``list``, ``tuple`` and
``NamedTuple`` containers whose leaves are tensors (or other objects).
fdl's params are nested dicts of tensors; optimizer states are NamedTuples.
Both flatten identically with ``optree`` (used here, fast, C++) and with
``torch.utils._pytree`` (used by ``torch.func`` and ``torch.compile``), so
every function below works on the same trees the transforms see.

Leaf order: dict entries in sorted-key order (as ``optree`` and
``jax.tree_util`` do; ``OrderedDict`` keeps its own order), NamedTuple fields
and sequence items in order. ``torch.utils._pytree`` visits dict entries in
insertion order instead, so the two agree exactly when dict keys were inserted
sorted; sorting makes fdl's order independent of how a dict was built (a
checkpoint, a torch ``state_dict``, ``init``). Structures rebuild the same
either way, so ``torch.func`` and ``torch.compile`` accept fdl trees as they are.

``None`` is an empty node, not a leaf (as in ``optree`` and ``jax.tree_util``;
``torch.utils._pytree`` counts it as a leaf).

Example:
    >>> import torch, fdl
    >>> params = {"fc": {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}}
    >>> fdl.tree.size(params)
    8
    >>> sorted(fdl.tree.to_flat_dict(params))
    ['fc.bias', 'fc.weight']
    >>> round(float(fdl.tree.global_norm(params)) ** 2, 4)
    6.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import optree
import torch

from fdl._leaf import describe as _kind

__all__ = [
    "PyTree",
    "TreeDef",
    "add",
    "all_finite",
    "allclose",
    "assert_same_structure",
    "check_match",
    "differences",
    "first_difference",
    "flatten",
    "flatten_with_paths",
    "from_flat_dict",
    "global_norm",
    "leaves",
    "map",
    "map_with_path",
    "ones_like",
    "path_str",
    "paths",
    "scale",
    "size",
    "stack",
    "structure",
    "sub",
    "to_flat_dict",
    "unflatten",
    "unstack",
    "vdot",
    "zeros_like",
]

PyTree = Any
TreeDef = optree.PyTreeSpec

_builtin_map = map


# ---------------------------------------------------------------------------
# Flattening and structure
# ---------------------------------------------------------------------------


def leaves(tree: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> list[Any]:
    """Return the leaves of ``tree`` in leaf order (dict entries by sorted key).

    Args:
        tree: a pytree.
        is_leaf: optional predicate; a node for which it is true is a leaf.

    Returns:
        The leaves as a list; ``None`` nodes contribute none.

    Example:
        >>> leaves({"b": 1, "a": [2, None, 3]})
        [2, 3, 1]
    """
    return optree.tree_leaves(tree, is_leaf=is_leaf)


def structure(tree: PyTree, is_leaf: Callable[[Any], bool] | None = None) -> TreeDef:
    """Return the tree structure (treedef) of ``tree``; treedefs compare with ``==``.

    Example:
        >>> structure({"w": 1, "b": 2}) == structure({"b": 5, "w": 6})
        True
    """
    return optree.tree_structure(tree, is_leaf=is_leaf)


def flatten(
    tree: PyTree, is_leaf: Callable[[Any], bool] | None = None
) -> tuple[list[Any], TreeDef]:
    """Return ``(leaves, treedef)``; :func:`unflatten` inverts it.

    Example:
        >>> lvs, treedef = flatten({"a": 1, "b": (2, 3)})
        >>> lvs
        [1, 2, 3]
        >>> unflatten(treedef, [x * 10 for x in lvs])
        {'a': 10, 'b': (20, 30)}
    """
    return optree.tree_flatten(tree, is_leaf=is_leaf)


def unflatten(treedef: TreeDef, leaves: Iterable[Any]) -> PyTree:
    """Rebuild a tree of structure ``treedef`` from ``leaves`` (in leaf order)."""
    return optree.tree_unflatten(treedef, list(leaves))


def path_str(path: Sequence[Any], sep: str = ".") -> str:
    """Join a path of keys/indices into a ``"a.b.0"`` string."""
    return sep.join(str(p) for p in path)


def flatten_with_paths(
    tree: PyTree, sep: str = ".", is_leaf: Callable[[Any], bool] | None = None
) -> tuple[list[str], list[Any], TreeDef]:
    """Return ``(paths, leaves, treedef)`` where paths are ``"a.b"`` strings.

    Dict entries appear by key, NamedTuple fields by name (``"mu.fc.weight"``),
    list and tuple entries by index; a bare leaf has the path ``""``.

    Example:
        >>> import torch
        >>> params = {"fc": {"weight": torch.ones(1), "bias": torch.zeros(1)}}
        >>> ps, lvs, _ = flatten_with_paths(params)
        >>> ps
        ['fc.bias', 'fc.weight']
    """
    accessors, lvs, treedef = optree.tree_flatten_with_accessor(tree, is_leaf=is_leaf)
    return [path_str([_entry_name(e) for e in acc], sep) for acc in accessors], lvs, treedef


def _entry_name(entry: Any) -> Any:
    """The path component of one accessor entry: a NamedTuple field name, else its key/index."""
    field = getattr(entry, "field", None)
    return field if isinstance(field, str) else entry.entry


def _children(node: Any) -> list[tuple[Any, Any]] | None:
    """(key, child) pairs of a container node in flatten order, None for a leaf."""
    if node is None:
        return []
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return list(zip(node._fields, node, strict=True))
    if isinstance(node, (list, tuple)):
        return list(enumerate(node))
    if isinstance(node, Mapping):
        if optree.tree_is_leaf(node):  # type: ignore[arg-type]
            return None
        keys = optree.tree_flatten_one_level(node)[2]  # type: ignore[arg-type]
        return [(k, node[k]) for k in keys]
    return None


def paths(tree: PyTree, sep: str = ".") -> list[str]:
    """Return the ``"a.b"`` path of every leaf, in leaf order."""
    return flatten_with_paths(tree, sep)[0]


def first_difference(a: PyTree, b: PyTree) -> tuple[str, str] | None:
    """Find the first place where the structures of ``a`` and ``b`` differ.

    Returns ``None`` when the structures are equal, else ``(path, reason)``
    where ``path`` is an ``"a.b"`` string (``"<root>"`` for the top) and
    ``reason`` says what differs there.

    Example:
        >>> import torch
        >>> first_difference({"w": torch.ones(1)}, {"w": torch.ones(1), "b": torch.ones(1)})
        ('<root>', "keys differ: missing ['b'] / extra []")
    """
    if structure(a) == structure(b):
        return None
    return _first_difference(a, b, ()) or ("<root>", "structures differ")


def _first_difference(a: Any, b: Any, prefix: tuple) -> tuple[str, str] | None:
    where = path_str(prefix) or "<root>"
    ka, kb = _children(a), _children(b)
    if ka is None and kb is None:
        return None
    if (ka is None) != (kb is None) or type(a) is not type(b):
        return where, f"{_kind(a)} vs {_kind(b)}"
    assert ka is not None and kb is not None
    if isinstance(a, Mapping):
        sa, sb = set(a), set(b)
        if sa != sb:
            return where, (
                f"keys differ: missing {sorted(_builtin_map(str, sb - sa))} / "
                f"extra {sorted(_builtin_map(str, sa - sb))}"
            )
    elif len(ka) != len(kb):
        return where, f"length {len(ka)} vs {len(kb)}"
    for (k, va), (_, vb) in zip(ka, kb, strict=True):
        d = _first_difference(va, vb, prefix + (k,))
        if d is not None:
            return d
    return None


def differences(
    got: PyTree,
    expected: PyTree,
    *,
    got_name: str = "the tree",
    expected_name: str = "the expected tree",
    check_shapes: bool = False,
    check_dtypes: bool = False,
) -> list[str]:
    """Every way ``got`` differs from ``expected``, one sentence per leaf, by dotted path.

    Paths are full (``"fc2.bias"``, ``"mu.fc2.bias"`` inside a NamedTuple state), so a
    message names the leaf itself, never a parent and a key list. With ``check_shapes``
    (``check_dtypes``) tensor leaves present in both must also agree in shape (dtype).
    Returns ``[]`` when nothing differs.

    Example:
        >>> import torch
        >>> params = {"fc1": {"weight": torch.ones(2, 3)}, "fc2": {"bias": torch.ones(2)}}
        >>> grads = {"fc1": {"weight": torch.ones(3, 2)}}
        >>> for line in differences(grads, params, got_name="the gradients",
        ...                         expected_name="the params", check_shapes=True):
        ...     print(line)
        'fc2.bias' is missing from the gradients
        'fc1.weight' has shape (3, 2) in the gradients, expected (2, 3) as in the params
    """
    walk = _DifferenceWalk(got_name, expected_name, check_shapes, check_dtypes)
    walk.visit(got, expected, ())
    return (
        [f"'{p}' is missing from {got_name}" for p in walk.missing]
        + [f"'{p}' is in {got_name} but not in {expected_name}" for p in walk.extra]
        + walk.other
    )


def _leaf_paths(node: Any, prefix: tuple) -> list[str]:
    kids = _children(node)
    if kids is None:
        return [path_str(prefix) or "<root>"]
    out: list[str] = []
    for k, v in kids:
        out.extend(_leaf_paths(v, prefix + (k,)))
    return out or [path_str(prefix) or "<root>"]


class _DifferenceWalk:
    """One walk of :func:`differences`: the leaf paths missing, extra and otherwise differing."""

    def __init__(
        self, got_name: str, expected_name: str, check_shapes: bool, check_dtypes: bool
    ) -> None:
        self.got_name, self.expected_name = got_name, expected_name
        self.check_shapes, self.check_dtypes = check_shapes, check_dtypes
        self.missing: list[str] = []
        self.extra: list[str] = []
        self.other: list[str] = []

    def visit(self, a: Any, b: Any, prefix: tuple) -> None:
        got_name, expected_name, other = self.got_name, self.expected_name, self.other
        where = path_str(prefix) or "<root>"
        ka, kb = _children(a), _children(b)
        if ka is None and kb is None:
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
                if self.check_shapes and tuple(a.shape) != tuple(b.shape):
                    other.append(
                        f"'{where}' has shape {tuple(a.shape)} in {got_name}, "
                        f"expected {tuple(b.shape)} as in {expected_name}"
                    )
                if self.check_dtypes and a.dtype != b.dtype:
                    other.append(
                        f"'{where}' has dtype {a.dtype} in {got_name}, "
                        f"expected {b.dtype} as in {expected_name}"
                    )
            return
        if ka is None or kb is None:
            other.append(
                f"'{where}' is a {_kind(a)} in {got_name} but a {_kind(b)} in {expected_name}"
            )
            return
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            da, db = dict(ka), dict(kb)
            for k, v in kb:
                if k not in da:
                    self.missing.extend(_leaf_paths(v, prefix + (k,)))
            for k, v in ka:
                if k not in db:
                    self.extra.extend(_leaf_paths(v, prefix + (k,)))
            for k, v in ka:
                if k in db:
                    self.visit(v, db[k], prefix + (k,))
            return
        if type(a) is not type(b) and not (
            isinstance(a, list | tuple)
            and isinstance(b, list | tuple)
            and not hasattr(a, "_fields")
            and not hasattr(b, "_fields")
        ):
            other.append(
                f"'{where}' is a {_kind(a)} in {got_name} but a {_kind(b)} in {expected_name}"
            )
            return
        if len(ka) != len(kb):
            other.append(
                f"'{where}' has {len(ka)} entries in {got_name}, expected {len(kb)} "
                f"as in {expected_name}"
            )
            return
        for (k, va), (_, vb) in zip(ka, kb, strict=True):
            self.visit(va, vb, prefix + (k,))


def check_match(
    got: PyTree,
    expected: PyTree,
    *,
    got_name: str = "the tree",
    expected_name: str = "the expected tree",
    check_shapes: bool = False,
    check_dtypes: bool = False,
    context: str = "",
) -> None:
    """Raise ``ValueError`` listing every leaf where ``got`` does not match ``expected``.

    The one structure validator of fdl: params against a layer, gradients against
    params, a state against the state its optimizer builds, a state dict against a
    model. Each differing leaf is named by its full dotted path (see
    :func:`differences`); ``context`` (e.g. ``"adam.update"``) starts the message.
    Call it on the eager path only (see ``fdl._eager``): it walks the trees in Python.

    Example:
        >>> import torch
        >>> check_match({"w": torch.ones(1)}, {"w": torch.ones(1), "b": torch.ones(1)},
        ...             got_name="the gradients", expected_name="the params", context="sgd.update")
        Traceback (most recent call last):
        ...
        ValueError: sgd.update: 'b' is missing from the gradients
    """
    if structure(got) == structure(expected) and _leaves_agree(
        got, expected, check_shapes, check_dtypes
    ):
        return  # the common case, without walking the trees in Python
    lines = differences(
        got,
        expected,
        got_name=got_name,
        expected_name=expected_name,
        check_shapes=check_shapes,
        check_dtypes=check_dtypes,
    )
    if lines:
        head = f"{context}: " if context else ""
        raise ValueError(head + "; ".join(lines))


def _leaves_agree(a: PyTree, b: PyTree, check_shapes: bool, check_dtypes: bool) -> bool:
    """Whether the tensor leaves of two equal structures agree in shape (dtype) where asked."""
    if not check_shapes and not check_dtypes:
        return True
    for x, y in zip(leaves(a), leaves(b), strict=True):
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if (check_shapes and x.shape != y.shape) or (check_dtypes and x.dtype != y.dtype):
                return False
    return True


def assert_same_structure(*trees: PyTree, names: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` naming every differing leaf path if the structures differ.

    Example:
        >>> import torch
        >>> assert_same_structure({"w": torch.ones(1)}, {"w": torch.ones(2)})  # shapes not compared
        >>> assert_same_structure({"w": 1}, {"v": 1}, names=("grads", "params"))
        Traceback (most recent call last):
        ...
        ValueError: grads and params have different tree structures at '<root>' ...
    """
    if len(trees) < 2:
        return
    names = list(names) if names is not None else [f"tree {i}" for i in range(len(trees))]
    first = structure(trees[0])
    for i, t in enumerate(trees[1:], start=1):
        if structure(t) != first:
            where, why = _first_difference(trees[0], t, ()) or ("<root>", "structures differ")
            lines = differences(trees[0], t, got_name=names[0], expected_name=names[i])
            raise ValueError(
                f"{names[0]} and {names[i]} have different tree structures at '{where}' "
                f"({why}): " + ("; ".join(lines) or "structures differ")
            )


# ---------------------------------------------------------------------------
# Mapping
# ---------------------------------------------------------------------------


def map(
    fn: Callable[..., Any],
    tree: PyTree,
    *rest: PyTree,
    is_leaf: Callable[[Any], bool] | None = None,
) -> PyTree:
    """Apply ``fn`` leafwise over ``tree`` and trees of the same structure.

    Example:
        >>> import torch
        >>> map(lambda a, b: a + b, {"x": torch.tensor(1.)}, {"x": torch.tensor(2.)})
        {'x': tensor(3.)}
    """
    if not rest:
        return optree.tree_map(fn, tree, is_leaf=is_leaf)
    lvs, treedef = optree.tree_flatten(tree, is_leaf=is_leaf)
    others = []
    for r in rest:
        r_lvs, r_def = optree.tree_flatten(r, is_leaf=is_leaf)
        if r_def != treedef:
            assert_same_structure(tree, r, names=("first tree", "other tree"))
            raise ValueError(f"map: trees differ in structure: {treedef} vs {r_def}")
        others.append(r_lvs)
    return optree.tree_unflatten(treedef, [fn(*xs) for xs in zip(lvs, *others, strict=True)])


def map_with_path(fn: Callable[..., Any], tree: PyTree, *rest: PyTree, sep: str = ".") -> PyTree:
    """Like :func:`map` but ``fn(path, leaf, *others)`` gets the ``"a.b"`` path.

    Example:
        >>> map_with_path(lambda p, x: f"{p}={x}", {"fc": {"w": 1}, "n": 2})
        {'fc': {'w': 'fc.w=1'}, 'n': 'n=2'}
    """
    ps, lvs, treedef = flatten_with_paths(tree, sep)
    others = []
    for r in rest:
        assert_same_structure(tree, r, names=("first tree", "other tree"))
        others.append(leaves(r))
    return unflatten(treedef, [fn(p, *xs) for p, *xs in zip(ps, lvs, *others, strict=True)])


# ---------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------


def zeros_like(tree: PyTree) -> PyTree:
    """A tree of zeros with the shapes, dtypes and devices of ``tree``.

    Example:
        >>> import torch
        >>> zeros_like({"w": torch.ones(2, dtype=torch.float64)})
        {'w': tensor([0., 0.], dtype=torch.float64)}
    """
    return map(torch.zeros_like, tree)


def ones_like(tree: PyTree) -> PyTree:
    """A tree of ones with the shapes, dtypes and devices of ``tree``."""
    return map(torch.ones_like, tree)


def add(tree: PyTree, *others: PyTree) -> PyTree:
    """Leafwise sum ``tree + others[0] + ...`` of trees of one structure.

    Example:
        >>> import torch
        >>> add({"w": torch.tensor(1.0)}, {"w": torch.tensor(2.0)}, {"w": torch.tensor(3.0)})
        {'w': tensor(6.)}
    """
    if not others:
        return tree
    return map(lambda x, *ys: sum(ys, x), tree, *others)


def sub(a: PyTree, b: PyTree) -> PyTree:
    """Leafwise ``a - b``.

    Example:
        >>> import torch
        >>> sub({"w": torch.tensor(3.0)}, {"w": torch.tensor(1.0)})
        {'w': tensor(2.)}
    """
    return map(torch.sub, a, b)


def scale(tree: PyTree, s: float | torch.Tensor) -> PyTree:
    """Leafwise ``s * tree`` (``s`` a Python number or a scalar tensor).

    A tensor ``s`` (a learning rate that changes per step) keeps a compiled
    step from recompiling.

    Example:
        >>> import torch
        >>> scale({"w": torch.tensor([1.0, 2.0])}, torch.tensor(0.5))
        {'w': tensor([0.5000, 1.0000])}
    """
    return map(lambda x: x * s, tree)


def vdot(a: PyTree, b: PyTree) -> torch.Tensor:
    """The inner product of two trees: ``sum_i sum(a_i * b_i)`` over leaf pairs.

    Raises ``ValueError`` naming the first differing path when the structures
    differ.

    Example:
        >>> import torch
        >>> vdot({"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 4.0])})
        tensor(11.)
    """
    la, ta = flatten(a)
    lb, tb = flatten(b)
    if ta != tb:
        assert_same_structure(a, b, names=("a", "b"))
    if not la:
        return torch.zeros(())
    return torch.stack([torch.sum(x * y) for x, y in zip(la, lb, strict=True)]).sum()


def global_norm(tree: PyTree) -> torch.Tensor:
    r"""The L2 norm of all leaves concatenated: ``sqrt(sum_i sum(x_i * x_i))``.

    This is the norm ``torch.nn.utils.clip_grad_norm_`` computes over a model's
    gradients. An empty tree has norm ``0``.

    Example:
        >>> import torch
        >>> global_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])})
        tensor(5.)
    """
    lvs = leaves(tree)
    if not lvs:
        return torch.zeros(())
    return torch.sqrt(torch.stack([torch.sum(x * x) for x in lvs]).sum())


def size(tree: PyTree) -> int:
    """Total number of elements over all tensor leaves (non-tensor leaves count 0).

    Example:
        >>> import torch
        >>> size({"w": torch.ones(2, 3), "b": torch.ones(2), "step": 7})
        8
    """
    return sum(x.numel() for x in leaves(tree) if isinstance(x, torch.Tensor))


def all_finite(tree: PyTree) -> torch.Tensor:
    """A boolean scalar tensor: every element of every leaf is finite (no inf, no nan).

    A tensor rather than a Python bool, so it traces under ``torch.compile``.

    Example:
        >>> import torch
        >>> all_finite({"w": torch.tensor([1.0, float("nan")])})
        tensor(False)
    """
    lvs = leaves(tree)
    if not lvs:
        return torch.ones((), dtype=torch.bool)
    return torch.stack([torch.isfinite(x).all() for x in lvs]).all()


def allclose(a: PyTree, b: PyTree, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    """True when ``a`` and ``b`` have one structure and every leaf pair is close.

    Tensor leaves are compared with :func:`torch.allclose`
    (``|a - b| <= atol + rtol * |b|``; shapes must be equal), other leaves
    with ``==``. Returns ``False`` (never raises) on any difference.

    Example:
        >>> import torch
        >>> allclose({"w": torch.tensor(1.0)}, {"w": torch.tensor(1.0 + 1e-7)})
        True
    """
    if structure(a) != structure(b):
        return False
    for x, y in zip(leaves(a), leaves(b), strict=True):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            x, y = torch.as_tensor(x), torch.as_tensor(y)
            if x.shape != y.shape or not torch.allclose(x, y.to(x.dtype), rtol=rtol, atol=atol):
                return False
        elif x != y:
            return False
    return True


# ---------------------------------------------------------------------------
# Stacking (ensembles)
# ---------------------------------------------------------------------------


def stack(trees: Sequence[PyTree]) -> PyTree:
    """Stack trees of one structure along a new leading axis (for ensembles/vmap).

    Example:
        >>> import torch
        >>> s = stack([{"w": torch.zeros(3)}, {"w": torch.ones(3)}])
        >>> s["w"].shape
        torch.Size([2, 3])
    """
    if len(trees) == 0:
        raise ValueError("stack needs at least one tree")
    return map(lambda *xs: torch.stack(xs), trees[0], *trees[1:])


def unstack(tree: PyTree) -> list[PyTree]:
    """Split every leaf along its leading axis: the inverse of :func:`stack`.

    Raises ``ValueError`` (naming the leaf) when a leaf is not a tensor with a
    leading axis, or when the leading axes differ.

    Example:
        >>> import torch
        >>> unstack({"w": torch.tensor([[1.0], [2.0]])})
        [{'w': tensor([1.])}, {'w': tensor([2.])}]
    """
    lvs, treedef = flatten(tree)
    if not lvs:
        return []
    for p, x in zip(paths(tree), lvs, strict=True):
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            raise ValueError(
                f"unstack needs tensor leaves with a leading axis; leaf '{p}' is {_kind(x)}"
            )
    n = lvs[0].shape[0]
    for x in lvs:
        if x.shape[0] != n:
            raise ValueError(
                f"unstack needs every leaf to have the same leading axis; got {n} and "
                f"shape {tuple(x.shape)}"
            )
    return [unflatten(treedef, [x[i] for x in lvs]) for i in range(n)]


# ---------------------------------------------------------------------------
# Flat "a.b" dicts
# ---------------------------------------------------------------------------


def to_flat_dict(tree: PyTree, sep: str = ".") -> dict[str, Any]:
    """Flatten a tree to ``{"a.b": leaf}`` (the layout of ``state_dict()``).

    Keys follow leaf order. ``None`` nodes have no leaves, so they do not
    appear. Raises ``ValueError`` when two leaves get the same key (a dict key
    that itself contains ``sep``).

    Example:
        >>> import torch
        >>> to_flat_dict({"fc": {"weight": torch.ones(1)}, "steps": [1, 2]})
        {'fc.weight': tensor([1.]), 'steps.0': 1, 'steps.1': 2}
    """
    ps, lvs, _ = flatten_with_paths(tree, sep)
    out = dict(zip(ps, lvs, strict=True))
    if len(out) != len(ps):
        dup = next(p for i, p in enumerate(ps) if p in ps[:i])
        raise ValueError(f"to_flat_dict: two leaves share the key {dup!r}; use another sep")
    return out


def from_flat_dict(flat: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """Inverse of :func:`to_flat_dict` for nested dicts: ``{"a.b": x} -> {"a": {"b": x}}``.

    Every level becomes a ``dict`` (lists, tuples and NamedTuples are not
    rebuilt; use :func:`unflatten` with a treedef for those). Raises
    ``ValueError`` when a key is both a leaf and a prefix of another key.

    Example:
        >>> from_flat_dict({"fc.weight": 1, "fc.bias": 2})
        {'fc': {'weight': 1, 'bias': 2}}
    """
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(sep)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"key {key!r} conflicts with leaf {sep.join(parts[: i + 1])!r}")
            node = child
        if parts[-1] in node:
            raise ValueError(f"key {key!r} conflicts with another key of the same prefix")
        node[parts[-1]] = value
    return out
