"""``_FnLayer``: the base of the parameter-free layers whose ``apply`` is one functional call.

The activations, the pools, the shuffles and the resampling layers are each a name for one
function of :mod:`fdl.nn.functional` with its keyword arguments fixed at construction. The
subclass names the function with a class keyword and declares those arguments as its
fields, under the function's own argument names::

    class Softplus(_FnLayer, fn=_F.softplus):
        beta: float = 1.0
        threshold: float = 20.0

    Softplus(2.0).apply({}, x) == _F.softplus(x, beta=2.0, threshold=20.0)

Layers whose call takes more than the input (the unpools' ``indices``, the keyed dropouts'
``key``) override ``apply`` and pass :meth:`_FnLayer._kwargs` on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from fdl.nn._base import Layer, Params


class _FnLayer(Layer):
    """Shared ``apply`` of the one-call layers: ``y = fn(x, **fields)``.

    ``fn`` (a class keyword) receives the input and every field by name, ``inplace``
    included (the functions accept it and never mutate their input). List values are
    stored as tuples, so that every layer stays hashable. A layer whose forward is more
    than that one call overrides ``_forward``.
    """

    _fn: ClassVar[Callable[..., Any]]
    _arg_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, fn: Callable[..., Any] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if fn is not None:
            cls._fn = staticmethod(fn)
        cls._arg_names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self._arg_names:
            value = getattr(self, name)
            if isinstance(value, list):
                self.__dict__[name] = tuple(value)

    def _kwargs(self) -> dict[str, Any]:
        """The fields, by name: ``fn``'s keyword arguments."""
        return {name: getattr(self, name) for name in self._arg_names}

    def _forward(self, x: torch.Tensor) -> Any:
        return self._fn(x, **self._kwargs())

    def apply(
        self, params: Params, x: torch.Tensor, *, key: Any = None, train: bool = False
    ) -> Any:
        """``y = fn(x, **fields)``; any input shape (see the class for its own constraints).

        Args:
            params: ``{}`` (what ``init`` returns).
            x: the input.
            key: unused.
            train: unused.

        Returns:
            The layer's output.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: expected a tensor input, got {type(x)}")
        return self._forward(x)
