"""``Sequential``: layers applied one after another, params keyed by position or name."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from fdl import random as _random
from fdl.nn._base import Layer, Params, State
from fdl.nn._layer_utils import split_key

__all__ = ["Sequential"]


def _init_children(children: Sequence[tuple[str, Layer]], key: _random.Key) -> Params:
    """Child ``i``'s ``init`` with ``split(key, len(children))[i]``, keyed by name.

    Children without params get no entry (as in torch's ``state_dict``).
    """
    keys = split_key(key, max(len(children), 1))
    params = {}
    for i, (name, layer) in enumerate(children):
        p = layer.init(keys[i])
        if p:
            params[name] = p
    return params


def _adopt_children(
    owner: Layer, name: str, attribute: str, items: list[tuple[str, Layer]]
) -> None:
    """Check ``(child name, layer)`` pairs and store them as ``owner.<attribute>``.

    Names must be non-empty, unique and free of ``'.'`` (they become dotted
    ``state_dict`` keys); ``name`` starts the error messages. The shapes for
    validation are computed now (on meta, cheaply) rather than on the first
    ``apply``, which may run inside ``torch.func`` transforms.
    """
    seen: set[str] = set()
    for key, layer in items:
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(
                f"{name}: child names must be non-empty strings without '.', got {key!r}"
            )
        if key in seen:
            raise ValueError(f"{name}: duplicate child name {key!r}")
        seen.add(key)
        if not isinstance(layer, Layer):
            raise TypeError(
                f"{name}: child {key!r} must be an fdl.nn layer, got {type(layer).__name__}"
            )
    owner._init_attributes(**{attribute: tuple(items)})
    for _, layer in items:
        layer.param_shapes()
    owner.param_shapes()
    owner.state_shapes()


def _init_children_state(children: Sequence[tuple[str, Layer]]) -> State:
    """The stateful children's ``init_state()``, keyed by name."""
    state = {}
    for name, layer in children:
        s = layer.init_state() if layer.stateful else {}
        if s:
            state[name] = s
    return state


class Sequential(Layer):
    """Apply layers in order, as ``torch.nn.Sequential``.

    ``Sequential(l0, l1, ...)`` keys params ``"0"``, ``"1"``, ...;
    ``Sequential(OrderedDict(conv1=..., fc1=...))`` uses the names. Children
    without params (activations, pooling, Flatten, Dropout) have no entry in
    ``params`` (an empty entry is accepted too), so
    ``fdl.nn.state_dict(params)`` has the keys of the torch module's
    ``state_dict()``.

    Keys: ``apply(..., key=k)`` splits ``k`` into one key per child
    (``fdl.random.split(k, len(self))[i]`` for child ``i``).

    State: if any child is stateful (BatchNorm) the Sequential is stateful:
    ``init_state()`` returns the children's states keyed like params, and
    ``apply(params, x, state=state, ...)`` returns ``(y, new_state)``.
    Otherwise ``apply`` returns ``y`` alone.

    Validation: the top-level ``apply`` checks the whole params and state trees
    once (every differing leaf named by its dotted path, e.g. ``'fc2.bias'``);
    the children then run unchecked.

    Children are reachable by index (``seq[0]``), slice (a new Sequential
    keeping the names, as torch) and name (``seq.conv1``).

    Args:
        *args: fdl layers, or one ``OrderedDict`` of name -> layer.

    Example:
        >>> import fdl, torch
        >>> from collections import OrderedDict
        >>> model = fdl.nn.Sequential(
        ...     OrderedDict(
        ...         conv1=fdl.nn.Conv2d(1, 4, 3, padding=1),
        ...         pool=fdl.nn.MaxPool2d(2),
        ...         flatten=fdl.nn.Flatten(),
        ...         fc1=fdl.nn.Linear(4 * 14 * 14, 10),
        ...     )
        ... )
        >>> params = model.init(fdl.random.key(0))
        >>> sorted(fdl.nn.state_dict(params))
        ['conv1.bias', 'conv1.weight', 'fc1.bias', 'fc1.weight']
        >>> model.apply(params, torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    _layers: tuple[tuple[str, Layer], ...]

    def __init__(self, *args: Any) -> None:
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            items = list(args[0].items())
        else:
            items = [(str(i), layer) for i, layer in enumerate(args)]
        _adopt_children(self, "Sequential", "_layers", items)

    # -- container protocol ------------------------------------------------

    def __getattr__(self, name: str) -> Layer:
        layers = self.__dict__.get("_layers", ())
        for n, layer in layers:
            if n == name:
                return layer
        raise AttributeError(f"Sequential has no child or attribute {name!r}")

    def __len__(self) -> int:
        return len(self._layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(layer for _, layer in self._layers)

    def __getitem__(self, idx: int | slice) -> Any:
        if isinstance(idx, slice):
            return Sequential(OrderedDict(self._layers[idx]))
        return self._layers[idx][1]

    def named_children(self) -> Iterator[tuple[str, Layer]]:
        """``(name, layer)`` pairs in order, as ``torch.nn.Module.named_children``."""
        return iter(self._layers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequential) and self._layers == other._layers

    def __hash__(self) -> int:
        return hash(self._layers)

    def __repr__(self) -> str:
        lines = [f"  ({name}): {layer!r}".replace("\n", "\n  ") for name, layer in self._layers]
        return "Sequential(\n" + "\n".join(lines) + "\n)" if lines else "Sequential()"

    # -- layer protocol ----------------------------------------------------

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        """True when any child is stateful."""
        return any(layer.stateful for _, layer in self._layers)

    def init(self, key: _random.Key) -> Params:
        """Each child's ``init`` with its own key (``split(key, len(self))[i]``)."""
        return _init_children(self._layers, key)

    def init_state(self) -> State:
        """The stateful children's ``init_state()``, keyed by child name."""
        return _init_children_state(self._layers)

    def apply(
        self,
        params: Params,
        x: Any,
        *,
        state: State | None = None,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> Any:
        """Thread ``x`` through the children; returns ``y``, or ``(y, new_state)`` if stateful."""
        stateful = self.stateful
        keys = _random.split(key, len(self._layers)) if key is not None else None
        new_state: State = {}
        for i, (name, layer) in enumerate(self._layers):
            p = params.get(name, {})
            k = keys[i] if keys is not None else None
            if layer.stateful:
                assert state is not None
                x, s = layer._apply_unchecked(p, x, state=state.get(name, {}), key=k, train=train)
                if s:
                    new_state[name] = s
            else:
                x = layer._apply_unchecked(p, x, key=k, train=train)
        return (x, new_state) if stateful else x
