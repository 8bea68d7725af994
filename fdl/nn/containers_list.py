"""``ModuleList`` and ``ModuleDict``: children by position or name, without an ``apply``.

torch code keeps blocks in ``nn.ModuleList`` / ``nn.ModuleDict`` and loops over them
in ``forward``. Here the container holds immutable fdl layers; its ``init`` returns
the children's params keyed ``"0"``, ``"1"``, ... (or by name), so a model that
stores one as ``blocks`` has the torch ``state_dict`` keys ``blocks.0.weight``. The
model's own ``apply`` walks the children with :meth:`ModuleList.split`, which pairs
each child with its params (or state) subtree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NoReturn

from fdl import _eager
from fdl import random as _random
from fdl.nn._base import Layer, Params, State
from fdl.nn.container import _adopt_children, _init_children, _init_children_state

__all__ = ["ModuleDict", "ModuleList"]


class _Children(Layer):
    """What ModuleList and ModuleDict share: named children, keyed params and state."""

    _items: tuple[tuple[str, Layer], ...]

    def _set_children(self, items: list[tuple[str, Layer]]) -> None:
        _adopt_children(self, type(self).__name__, "_items", items)

    def __len__(self) -> int:
        return len(self._items)

    def named_children(self) -> Iterator[tuple[str, Layer]]:
        """``(name, layer)`` pairs in order, as ``torch.nn.Module.named_children``."""
        return iter(self._items)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._items == other._items  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._items))

    def __repr__(self) -> str:
        name = type(self).__name__
        lines = [f"  ({key}): {layer!r}".replace("\n", "\n  ") for key, layer in self._items]
        return f"{name}(\n" + "\n".join(lines) + "\n)" if lines else f"{name}()"

    # -- layer protocol ----------------------------------------------------

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        """True when any child is stateful."""
        return any(layer.stateful for _, layer in self._items)

    def init(self, key: _random.Key) -> Params:
        """Each child's ``init`` with its own key: ``split(key, len(self))[i]`` for child ``i``.

        Children without params get no entry, as in :class:`~fdl.nn.Sequential`
        (and as in torch's ``state_dict``).
        """
        return _init_children(self._items, key)

    def init_state(self) -> State:
        """The stateful children's ``init_state()``, keyed by child name."""
        return _init_children_state(self._items)

    def apply(self, params: Params, x: Any, **kwargs: Any) -> NoReturn:
        """Not defined, as torch's containers have no ``forward``: loop over the children."""
        raise NotImplementedError(
            f"{type(self).__name__} has no apply: iterate its children in your layer's apply, "
            "e.g. `for layer, p in zip(self.blocks, self.blocks.split(params['blocks']))`"
        )

    apply.__fdl_checked__ = True  # type: ignore[attr-defined]  # it only raises: nothing to check

    def _subtrees(self, tree: Mapping[str, Any] | None) -> list[Any]:
        """The subtree of every child, in order; ``{}`` where the tree has no entry."""
        tree = {} if tree is None else tree
        if _eager.validating():
            if not isinstance(tree, Mapping):
                raise TypeError(
                    f"{type(self).__name__}.split: expected a dict tree, got {type(tree).__name__}"
                )
            names = {name for name, _ in self._items}
            extra = [k for k in tree if k not in names]
            if extra:
                raise ValueError(
                    f"{type(self).__name__}.split: entries {extra} match no child "
                    f"(children: {[name for name, _ in self._items]})"
                )
        return [tree.get(name, {}) for name, _ in self._items]

    def _joined(self, values: Iterable[tuple[str, Any]]) -> dict[str, Any]:
        return {name: v for name, v in values if not (isinstance(v, Mapping) and not v)}


class ModuleList(_Children):
    """Layers held by position, as ``torch.nn.ModuleList``; params keyed ``"0"``, ``"1"``, ...

    The list has no ``apply``: a model that holds one loops over it, pairing each
    child with its params by :meth:`split` (which gives ``{}`` for children without
    params, since those have no entry, as in torch's ``state_dict``). Indexing,
    negative indices, slices (a new ``ModuleList`` numbered from 0, as torch),
    ``len``, iteration and ``+`` behave as torch's. The list is immutable: there is
    no ``append``/``insert``/``extend``/item assignment; build a new one
    (``ModuleList([*blocks, layer])`` or ``blocks + ModuleList([layer])``).

    Keys: ``init(key)`` gives child ``i`` the key ``fdl.random.split(key, len(self))[i]``
    (as :class:`~fdl.nn.Sequential`), so children are drawn independently.

    State: if any child is stateful, ``init_state()`` returns the children's states
    keyed like params; the model threads them (see ``docs/nn.md``).

    Args:
        layers: an iterable of fdl layers.

    Example:
        >>> import fdl, torch
        >>> class MLP(fdl.nn.Layer):
        ...     def __init__(self, sizes):
        ...         self.blocks = fdl.nn.ModuleList(
        ...             [fdl.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
        ...         )
        ...     def init(self, key):
        ...         return {"blocks": self.blocks.init(key)}
        ...     def apply(self, params, x, *, key=None, train=False):
        ...         for layer, p in zip(self.blocks, self.blocks.split(params["blocks"])):
        ...             x = torch.tanh(layer.apply(p, x))
        ...         return x
        >>> model = MLP([3, 8, 8, 2])
        >>> params = model.init(fdl.random.key(0))
        >>> list(fdl.nn.state_dict(params))[:3]
        ['blocks.0.weight', 'blocks.0.bias', 'blocks.1.weight']
        >>> model.apply(params, torch.ones(4, 3)).shape, len(model.blocks)
        (torch.Size([4, 2]), 3)
    """

    def __init__(self, layers: Iterable[Layer] = ()) -> None:
        if isinstance(layers, Layer) or not isinstance(layers, Iterable):
            raise TypeError(
                f"ModuleList: expected an iterable of fdl.nn layers, got {type(layers).__name__}"
            )
        self._set_children([(str(i), layer) for i, layer in enumerate(layers)])

    def __iter__(self) -> Iterator[Layer]:
        return iter(layer for _, layer in self._items)

    def __getitem__(self, idx: int | slice) -> Any:
        if isinstance(idx, slice):
            return ModuleList(layer for _, layer in self._items[idx])
        n = len(self._items)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} is out of range")
        return self._items[idx][1]

    def __add__(self, other: ModuleList) -> ModuleList:
        if not isinstance(other, ModuleList):
            return NotImplemented
        return ModuleList([*self, *other])

    def split(self, tree: Params | State | None) -> tuple[Any, ...]:
        """The params (or state) subtree of each child, in order; ``{}`` for a child with none.

        ``zip(self.blocks, self.blocks.split(params["blocks"]))`` pairs every child
        with its params. Eagerly, an entry that names no child raises ``ValueError``.
        """
        return tuple(self._subtrees(tree))

    def join(self, trees: Iterable[Any]) -> dict[str, Any]:
        """Inverse of :meth:`split`: ``{"0": t0, "1": t1, ...}``, empty subtrees left out.

        Use it to build the new state a model returns: ``self.blocks.join(new_states)``.
        """
        trees = list(trees)
        if len(trees) != len(self._items):
            raise ValueError(
                f"ModuleList.join: expected {len(self._items)} subtrees, got {len(trees)}"
            )
        return self._joined(zip((name for name, _ in self._items), trees, strict=True))


class ModuleDict(_Children):
    """Layers held by name, as ``torch.nn.ModuleDict``; params keyed by the names.

    Insertion order is kept (as torch). Access: ``d["name"]``, ``d.name``, ``in``,
    ``len``, iteration over the names, ``keys()``, ``values()``, ``items()``. A
    missing name raises ``KeyError``. Names must be non-empty strings without
    ``"."`` and must not shadow a method (``"keys"``); torch raises ``KeyError`` for
    these, fdl ``ValueError``, as :class:`~fdl.nn.Sequential` does. The dict is
    immutable (no ``update``/``pop``/item assignment): build a new one.

    The dict has no ``apply``: a model that holds one picks its children by name,
    with their params from :meth:`split` (``{}`` for a child without params) or
    ``params["heads"]["name"]``.

    Keys: ``init(key)`` gives the ``i``-th child (in order) the key
    ``fdl.random.split(key, len(self))[i]``.

    Args:
        layers: a mapping of name -> fdl layer, or an iterable of ``(name, layer)`` pairs.

    Example:
        >>> import fdl, torch
        >>> heads = fdl.nn.ModuleDict({"cls": fdl.nn.Linear(4, 3), "act": fdl.nn.ReLU()})
        >>> params = heads.init(fdl.random.key(0))
        >>> list(params), list(heads), "act" in heads
        (['cls'], ['cls', 'act'], True)
        >>> sub = heads.split(params)
        >>> heads.act.apply(sub["act"], heads["cls"].apply(sub["cls"], torch.ones(2, 4))).shape
        torch.Size([2, 3])
    """

    def __init__(self, layers: Mapping[str, Layer] | Iterable[tuple[str, Layer]] | None = None):
        if layers is None:
            items: list[tuple[str, Layer]] = []
        elif isinstance(layers, Mapping):
            items = list(layers.items())
        elif isinstance(layers, Iterable) and not isinstance(layers, (Layer, str)):
            items = []
            for j, pair in enumerate(layers):
                if not isinstance(pair, tuple | list) or len(pair) != 2:
                    raise TypeError(
                        f"ModuleDict: element #{j} of the iterable should be a (name, layer) "
                        f"pair, got {pair!r}"
                    )
                items.append((pair[0], pair[1]))
        else:
            raise TypeError(
                "ModuleDict: expected a mapping or an iterable of (name, layer) pairs, "
                f"got {type(layers).__name__}"
            )
        for key, _ in items:
            if isinstance(key, str) and hasattr(type(self), key):
                raise ValueError(f"ModuleDict: child name {key!r} shadows an attribute")
        self._set_children(items)

    def __getattr__(self, name: str) -> Layer:
        for key, layer in self.__dict__.get("_items", ()):
            if key == name:
                return layer
        raise AttributeError(f"ModuleDict has no child or attribute {name!r}")

    def __getitem__(self, name: str) -> Layer:
        for key, layer in self._items:
            if key == name:
                return layer
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(key for key, _ in self._items)

    def keys(self) -> list[str]:
        """The child names, in order."""
        return [key for key, _ in self._items]

    def values(self) -> list[Layer]:
        """The children, in order."""
        return [layer for _, layer in self._items]

    def items(self) -> list[tuple[str, Layer]]:
        """``(name, layer)`` pairs, in order."""
        return list(self._items)

    def split(self, tree: Params | State | None) -> dict[str, Any]:
        """The params (or state) subtree of each child by name; ``{}`` for a child with none.

        Eagerly, an entry that names no child raises ``ValueError``.
        """
        return dict(zip(self.keys(), self._subtrees(tree), strict=True))

    def join(self, trees: Mapping[str, Any]) -> dict[str, Any]:
        """Inverse of :meth:`split`: the subtrees in child order, empty ones left out."""
        extra = [k for k in trees if k not in self]
        if extra:
            raise ValueError(f"ModuleDict.join: entries {extra} match no child")
        return self._joined((k, trees[k]) for k in self.keys() if k in trees)
