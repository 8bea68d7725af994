"""``functionalize``: any ``torch.nn.Module`` as an fdl ``init``/``apply`` pair."""

from __future__ import annotations

import copy
from itertools import chain
from typing import Any

import torch
from torch.func import functional_call

from fdl import random as _random
from fdl import tree as _tree
from fdl.nn._base import Layer, Params, State

__all__ = ["FunctionalModule", "functionalize"]


def _shallow_copy(module: torch.nn.Module, train: bool) -> torch.nn.Module:
    """A copy of the module structure that shares (never copies) its tensors."""
    memo: dict[int, Any] = {id(t): t for t in chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo).train(train)


class FunctionalModule(Layer):
    """A ``torch.nn.Module`` wrapped as an fdl layer (see :func:`functionalize`)."""

    module_type: str
    _param_names: tuple[str, ...]
    _buffer_names: tuple[str, ...]
    _modules: dict[bool, torch.nn.Module]

    def __init__(self, module: torch.nn.Module) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(
                f"functionalize: expected a torch.nn.Module, got {type(module).__name__}"
            )
        persistent = set(module.state_dict())
        param_names = [n for n, _ in module.named_parameters()]
        buffer_names = [n for n, _ in module.named_buffers() if n in persistent]
        self._init_attributes(
            module_type=type(module).__name__,
            _param_names=tuple(param_names),
            _buffer_names=tuple(buffer_names),
            _modules={t: _shallow_copy(module, t) for t in (False, True)},
            stateful=bool(buffer_names),
        )

    def __repr__(self) -> str:
        return f"functionalize({self._modules[False]!r})"

    def _collect(self, names: tuple[str, ...], meta: bool) -> dict[str, Any]:
        module = self._modules[False]
        tensors = dict(chain(module.named_parameters(), module.named_buffers()))
        if meta:
            flat = {n: torch.empty_like(tensors[n], device="meta") for n in names}
        else:
            flat = {n: tensors[n].detach().clone() for n in names}
        return _tree.from_flat_dict(flat)

    def init(self, key: _random.Key | None = None) -> Params:
        """Copies of the module's current parameters (``key`` is not used).

        torch modules draw their initial values from the global RNG when they
        are built; fdl does not re-draw them.
        """
        return self._collect(self._param_names, meta=False)

    def init_state(self) -> State:
        """Copies of the module's persistent buffers (``{}`` if it has none)."""
        return self._collect(self._buffer_names, meta=False)

    def param_shapes(self) -> Params:
        """The params as meta tensors (nothing allocated)."""
        return self._collect(self._param_names, meta=True)

    def state_shapes(self) -> State:
        """The buffers as meta tensors (nothing allocated)."""
        return self._collect(self._buffer_names, meta=True)

    def apply(
        self,
        params: Params,
        *args: Any,
        state: State | None = None,
        key: _random.Key | None = None,
        train: bool = False,
        **kwargs: Any,
    ) -> Any:
        """``module(*args, **kwargs)`` with ``params`` (and ``state``) swapped in.

        Returns the module's output, or ``(output, new_state)`` when the module
        has buffers. ``train`` picks ``module.train()``/``.eval()`` behaviour.
        """
        tensors = _tree.to_flat_dict(params)
        if not self.stateful:
            return functional_call(self._modules[bool(train)], tensors, args, kwargs)
        # the module updates its buffers in place: give it fresh copies and return them
        assert state is not None  # checked by the base on the eager path
        given = _tree.to_flat_dict(state)
        buffers = {n: given[n].clone() for n in self._buffer_names}
        y = functional_call(self._modules[bool(train)], {**tensors, **buffers}, args, kwargs)
        return y, _tree.from_flat_dict(buffers)


def functionalize(module: torch.nn.Module) -> FunctionalModule:
    """Turn a ``torch.nn.Module`` into an fdl layer via ``torch.func.functional_call``.

    ``init(key)`` returns copies of the module's current parameters as a nested
    dict (``{"0": {"weight": ...}}``, the key is unused); ``init_state()``
    returns its persistent buffers the same way. ``apply(params, *args,
    state=None, key=None, train=False, **kwargs)`` runs the module's forward
    with those tensors swapped in, returning the output, or
    ``(output, new_state)`` when the module has buffers (in-place buffer updates
    such as BatchNorm's running statistics land in copies that come back as
    ``new_state``; the ``state`` passed in is not modified).

    The wrapped module is not changed: ``apply`` runs on structural copies in
    train and eval mode that share the module's tensors.

    Args:
        module: any ``torch.nn.Module``.

    Returns:
        A :class:`FunctionalModule` (an fdl layer).

    Note:
        ``key`` is accepted for the layer protocol but torch modules that draw
        random numbers (``torch.nn.Dropout``) still use torch's global RNG.

    Example:
        >>> import fdl, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> model = fdl.nn.functionalize(net)
        >>> params = model.init(fdl.random.key(0))
        >>> sorted(fdl.nn.state_dict(params)) == sorted(net.state_dict())
        True
        >>> x = torch.randn(2, 3)
        >>> torch.equal(model.apply(params, x), net(x))
        True
    """
    return FunctionalModule(module)
