"""The layer protocol shared by every ``fdl.nn`` layer.

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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from fdl import random as _random
from fdl import tree as _tree

__all__ = ["Layer", "Params", "State", "eval_shape"]

Params = dict[str, Any]
State = dict[str, Any]


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


class Layer:
    """Base class of fdl layers: hyperparameters in, pure ``init``/``apply`` out."""

    stateful: ClassVar[bool] = False

    def init(self, key: _random.Key) -> Params:
        """Draw fresh parameters from ``key``; ``{}`` for layers without parameters."""
        return {}

    def init_state(self) -> State:
        """The initial running state (buffers); ``{}`` for stateless layers."""
        return {}

    def apply(self, params: Params, x: torch.Tensor, **kwargs: Any) -> Any:
        raise NotImplementedError

    def param_shapes(self) -> Params:
        """What ``init`` returns, as meta tensors (no memory allocated)."""
        cached = self.__dict__.get("_param_shapes_cache")
        if cached is None:
            cached = eval_shape(self.init, _random.key(0))
            object.__setattr__(self, "_param_shapes_cache", cached)
        return cached

    def check_params(self, params: Params, where: str = "") -> None:
        """Raise ``ValueError`` naming the path and both shapes if ``params`` is wrong.

        Skipped while ``torch.compile`` traces: shapes were checked on the eager call or
        surface as a shape error in the kernel, and validation must not break the graph.
        """
        if torch.compiler.is_compiling():
            return
        expected = self.param_shapes()
        name = type(self).__name__
        if not isinstance(params, dict):
            raise ValueError(
                f"{name}: params must be a dict like {{{', '.join(expected)}}}, "
                f"got {type(params).__name__}"
            )
        diff = _tree.first_difference(params, expected)
        if diff is not None:
            got_flat, exp_flat = _tree.to_flat_dict(params), _tree.to_flat_dict(expected)
            missing = [k for k in exp_flat if k not in got_flat]
            extra = [k for k in got_flat if k not in exp_flat]
            prefix = f"{where}." if where else ""
            if missing or extra:
                parts = [
                    f"missing '{prefix}{k}' (expected shape {tuple(exp_flat[k].shape)})"
                    for k in missing
                ] + [
                    f"unexpected '{prefix}{k}' (shape {tuple(getattr(got_flat[k], 'shape', ()))})"
                    for k in extra
                ]
                raise ValueError(f"{name}: params do not match the layer: {'; '.join(parts)}")
            path, why = diff
            path = f"{where}.{path}".strip(".") if path != "<root>" else (where or "<root>")
            raise ValueError(f"{name}: params at '{path}' do not match the layer: {why}")
        for p, got, exp in zip(
            _tree.paths(params), _tree.leaves(params), _tree.leaves(expected), strict=True
        ):
            if tuple(got.shape) != tuple(exp.shape):
                full = f"{where}.{p}" if where else p
                raise ValueError(
                    f"{name}: parameter '{full}' has shape {tuple(got.shape)}, "
                    f"expected {tuple(exp.shape)}"
                )
