"""The layer protocol shared by every ``fdl.nn`` layer, enforced by :class:`Layer`.

A layer is an immutable object holding only hyperparameters (sizes, flags,
``dtype``/``device``). Its two pure functions:

``init(key) -> params``
    A dict of tensors named and shaped as the equivalent ``torch.nn`` module's
    parameters (``{}`` for layers without parameters).

``apply(params, x, *, key=None, train=False)``
    The forward pass. ``key`` (an ``fdl.random`` key) is needed by stochastic
    layers (Dropout) when ``train=True``.

Layers with running statistics (BatchNorm, or a Sequential containing one)
set ``stateful = True``. They also have ``init_state() -> state`` (a dict of
buffers named as torch names them, e.g. ``running_mean``) and their ``apply``
takes the state and returns the new one::

    y, state = layer.apply(params, x, state=state, train=True)

Stateless layers have ``init_state() -> {}`` and return ``y`` alone.

What the base does for every subclass (see "How to write a layer" in
``docs/nn.md``):

* the class becomes a frozen dataclass of its annotated fields (a class that
  is already decorated with ``@dataclass(frozen=True)`` keeps working; a class
  with a hand-written ``__init__`` sets its attributes once with
  :meth:`Layer._init_attributes`);
* fields declared with :func:`field` ``(converter=...)`` are normalised once,
  at construction, then ``_check_fields`` runs the cross-field checks;
* the class's ``apply`` is wrapped so that, eagerly, ``params`` (and
  ``state``) are checked against ``param_shapes()`` (``state_shapes()``) once,
  at the outermost call: containers call their children's
  ``_apply_unchecked``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar, dataclass_transform

import torch

from fdl import _eager
from fdl import random as _random
from fdl import tree as _tree

__all__ = ["Layer", "Params", "State", "eval_shape", "field"]

Params = dict[str, Any]
State = dict[str, Any]
Tensor = torch.Tensor
OptKey = _random.Key | None  # the ``key`` argument of ``apply``

#: ``converter(value, layer) -> value``: normalise one field; raise ``TypeError`` or
#: ``ValueError`` with a message that reads after ``"<Layer>: <field> "``.
Converter = Callable[[Any, Any], Any]

_CONVERTER = "fdl.converter"


def eval_shape(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` on the meta device: shapes and dtypes without allocating memory.

    Tensor arguments are moved to ``meta``; factory functions inside ``fn``
    create meta tensors.

    Example:
        >>> import fdl
        >>> shapes = eval_shape(lambda k: fdl.random.normal(k, (1000, 1000)), fdl.random.key(0))
        >>> shapes.shape, shapes.device.type
        (torch.Size([1000, 1000]), 'meta')
    """
    args, kwargs = _tree.map(
        lambda x: x.to("meta") if isinstance(x, torch.Tensor) else x, (args, kwargs)
    )
    with torch.device("meta"):
        return fn(*args, **kwargs)


def field(
    default: Any = dataclasses.MISSING, *, converter: Converter | None = None, **kwargs: Any
) -> Any:
    """A layer field, as :func:`dataclasses.field`, normalised by ``converter`` at construction.

    ``converter(value, layer)`` gets the value passed to the constructor and the
    layer under construction (fields declared earlier are already converted) and
    returns the stored value.

    Example:
        >>> from fdl.nn._base import Layer, field
        >>> class Scale(Layer):
        ...     factor: float = field(default=2, converter=lambda v, layer: float(v))
        ...     def apply(self, params, x, *, key=None, train=False):
        ...         return x * self.factor
        >>> Scale(3)
        Scale(factor=3.0)
    """
    metadata = dict(kwargs.pop("metadata", None) or {})
    if converter is not None:
        metadata[_CONVERTER] = converter
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def _prune(tree: Any) -> Any:
    """Drop empty sub-dicts, so ``{"0": {...}, "1": {}}`` equals ``{"0": {...}}``."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for k, v in tree.items():
        v = _prune(v)
        if not (isinstance(v, dict) and not v):
            out[k] = v
    return out


def _checked(apply: Callable[..., Any]) -> Callable[..., Any]:
    """``apply`` preceded, eagerly, by the params/state check of :meth:`Layer._check_call`."""

    @functools.wraps(apply)
    def checked_apply(self: Layer, params: Params, *args: Any, **kwargs: Any) -> Any:
        if _eager.validating():
            self._check_call(params, kwargs.get("state"))
        return apply(self, params, *args, **kwargs)

    checked_apply.__fdl_checked__ = True  # type: ignore[attr-defined]
    return checked_apply


_INITIALISING = "_fdl_initialising"


def _initialising(init: Callable[..., None]) -> Callable[..., None]:
    """Let a hand-written ``__init__`` assign attributes (``self.fc1 = ...``), then seal."""
    if getattr(init, "__fdl_initialising__", False):
        return init

    @functools.wraps(init)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> None:
        outer = _INITIALISING not in self.__dict__
        self.__dict__[_INITIALISING] = True
        try:
            init(self, *args, **kwargs)
        finally:
            if outer:
                del self.__dict__[_INITIALISING]

    wrapped.__fdl_initialising__ = True  # type: ignore[attr-defined]
    return wrapped


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, field))
class Layer:
    """Base class of fdl layers: hyperparameters in, pure ``init``/``apply`` out.

    Subclasses declare their hyperparameters as annotated fields (``x: int = 1``,
    or ``x: tuple[int, int] = field(default=1, converter=...)``) and define ``init``
    (if they have params), ``apply`` and, for running state, ``stateful = True``
    and ``init_state``. The base makes them frozen dataclasses and validates
    ``apply``'s params and state; see the module docstring.
    """

    stateful: ClassVar[bool] = False
    __dataclass_fields__: ClassVar[dict[str, Any]]  # set on every subclass by __init_subclass__

    # -- construction ------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            # Field objects are put back after the pass, so that an explicit
            # @dataclass(frozen=True) on top re-reads the same fields (idempotent).
            declared = {k: v for k, v in cls.__dict__.items() if isinstance(v, dataclasses.Field)}
            dataclasses.dataclass(frozen=True)(cls)
            for name, value in declared.items():
                setattr(cls, name, value)
            # immutability comes from Layer.__setattr__, so a second decoration can add its own
            for name in ("__setattr__", "__delattr__"):
                if name in cls.__dict__:
                    delattr(cls, name)
        else:
            cls.__init__ = _initialising(cls.__dict__["__init__"])  # type: ignore[method-assign]
        apply = cls.__dict__.get("apply")
        if apply is not None and not getattr(apply, "__fdl_checked__", False):
            cls._apply_unchecked = apply  # type: ignore[method-assign]
            cls.apply = _checked(apply)  # type: ignore[method-assign]

    def __setattr__(self, name: str, value: Any) -> None:
        if _INITIALISING in self.__dict__:  # inside a hand-written __init__: set once
            self.__dict__[name] = value
            return
        raise dataclasses.FrozenInstanceError(
            f"{type(self).__name__} is immutable: cannot assign to {name!r} (build a new layer)"
        )

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(
            f"{type(self).__name__} is immutable: cannot delete {name!r}"
        )

    def __post_init__(self) -> None:
        """Apply the fields' converters in declaration order, then ``_check_fields``."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            convert = f.metadata.get(_CONVERTER)
            if convert is None:
                continue
            try:
                value = convert(getattr(self, f.name), self)
            except (TypeError, ValueError) as err:
                raise type(err)(f"{type(self).__name__}: {f.name} {err}") from None
            self.__dict__[f.name] = value
        self._check_fields()

    def _check_fields(self) -> None:
        """Cross-field checks of the hyperparameters, after conversion (none by default)."""

    def _init_attributes(self, **values: Any) -> None:
        """Set attributes once, from a hand-written ``__init__`` (containers, wrappers)."""
        self.__dict__.update(values)

    def _cached(self, name: str, make: Callable[[], Any]) -> Any:
        """``make()``, computed once per layer and kept beside the (frozen) fields."""
        cache = self.__dict__.setdefault("_fdl_cache", {})
        if name not in cache:
            cache[name] = make()
        return cache[name]

    # -- the protocol ------------------------------------------------------

    def init(self, key: _random.Key) -> Params:
        """Draw fresh parameters from ``key``; ``{}`` for layers without parameters."""
        return {}

    def init_state(self) -> State:
        """The initial running state (buffers); ``{}`` for stateless layers."""
        return {}

    def apply(self, params: Params, x: torch.Tensor, **kwargs: Any) -> Any:
        raise NotImplementedError

    _apply_unchecked = apply

    def param_shapes(self) -> Params:
        """What ``init`` returns, as meta tensors (no memory allocated)."""
        if type(self).init is Layer.init:
            return {}
        return self._cached("param_shapes", lambda: eval_shape(self.init, _random.key(0)))

    def state_shapes(self) -> State:
        """What ``init_state`` returns, as meta tensors.

        Built from ``init_state()`` itself (buffers are small) rather than under the
        meta device, so that it also works when first needed inside ``torch.func``
        transforms.
        """
        if not self.stateful:
            return {}
        return self._cached(
            "state_shapes", lambda: _tree.map(lambda t: t.to("meta"), self.init_state())
        )

    # -- validation (eager only, once per top-level call) --------------------

    def check_params(self, params: Params, where: str = "") -> None:
        """Raise ``ValueError`` naming the dotted path of every leaf that does not match.

        Missing and extra entries and wrong shapes are all listed (empty sub-dicts of
        parameterless children are accepted). ``where`` prefixes the paths.
        """
        expected = self._cached("param_spec", lambda: _prune(self.param_shapes()))
        if where:
            expected, params = {where: expected}, {where: params}
        if _tree.structure(params) != _tree.structure(expected):
            params = _prune(params)  # an empty entry for a parameterless child is accepted
        _tree.check_match(
            params,
            expected,
            got_name="the params",
            expected_name="the layer",
            check_shapes=True,
            context=type(self).__name__,
        )

    def check_state(self, state: State | None) -> None:
        """Raise ``ValueError`` if ``state`` is not what ``init_state()`` builds (shapes too)."""
        name = type(self).__name__
        if not self.stateful:
            if state is not None and _prune(state):
                raise ValueError(
                    f"{name}: this layer has no running state but got a non-empty state"
                )
            return
        if state is None:
            raise ValueError(
                f"{name}: this layer has running state; pass state=... "
                "(from init_state()) and take (y, new_state) back"
            )
        expected = self._cached("state_spec", lambda: _prune(self.state_shapes()))
        if _tree.structure(state) != _tree.structure(expected):
            state = _prune(state)
        _tree.check_match(
            state,
            expected,
            got_name="the state",
            expected_name="init_state()",
            check_shapes=True,
            context=f"{name}: the state at this call does not match init_state()",
        )

    def _check_call(self, params: Params, state: State | None) -> None:
        """The check every ``apply`` runs first, eagerly, at the outermost call."""
        self.check_params(params)
        self.check_state(state)
