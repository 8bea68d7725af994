"""``state_dict`` / ``load_state_dict``: fdl params (and state) <-> torch ``state_dict()`` keys.

A params tree ``{"conv1": {"weight": w, "bias": b}}`` flattens to
``{"conv1.weight": w, "conv1.bias": b}``: the keys of the equivalent
``torch.nn.Module.state_dict()``. Buffers (BatchNorm's ``running_mean``,
``running_var``, ``num_batches_tracked``) live in the separate ``state`` tree
and are merged in when ``state`` is given. Loading goes back; with a model the
keys and shapes are checked against what ``model.init`` would build (computed on
the meta device, nothing allocated) and buffer keys are told apart from params
by ``model.init_state()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fdl import tree as _tree
from fdl.nn._base import Layer, Params, State, eval_shape

__all__ = ["load_state_dict", "state_dict"]


def _ordered_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    keys = list(a) + [k for k in b if k not in a]
    if keys and all(k.isdigit() for k in keys):
        keys.sort(key=int)
    return keys


def _merge(params: Any, state: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Walk params and state together, emitting a module's own tensors before its children's."""
    params = params if isinstance(params, Mapping) else {}
    state = state if isinstance(state, Mapping) else {}
    for tree in (params, state):  # own params first, then own buffers, as torch orders them
        for k, v in tree.items():
            if isinstance(v, torch.Tensor):
                out[prefix + k] = v
    for k in _ordered_keys(params, state):
        p, s = params.get(k), state.get(k)
        if isinstance(p, torch.Tensor) or isinstance(s, torch.Tensor):
            continue
        if (
            p is not None
            and not isinstance(p, Mapping)
            or s is not None
            and not isinstance(s, Mapping)
        ):
            bad = p if p is not None and not isinstance(p, Mapping) else s
            raise TypeError(
                f"state_dict: '{prefix}{k}' must be a tensor or a dict, got {type(bad).__name__}"
            )
        _merge(p, s, f"{prefix}{k}.", out)


def state_dict(params: Params, state: State | None = None) -> dict[str, torch.Tensor]:
    """Flatten params (and buffers from ``state``) to torch ``state_dict()`` keys.

    Keys are joined with ``"."`` and ordered as torch orders them (a module's
    params, then its buffers, then its children in order). The tensors are the
    leaves themselves, not copies.

    Args:
        params: a params tree from ``layer.init`` (nested dicts of tensors).
        state: the model's state tree (buffers), merged in when given.

    Returns:
        A flat ``{"conv1.weight": tensor, ...}`` dict, ready for ``torch.save``
        or ``torch_module.load_state_dict``.

    Example:
        >>> import fdl
        >>> model = fdl.nn.Sequential(fdl.nn.Linear(3, 4), fdl.nn.ReLU(), fdl.nn.Linear(4, 2))
        >>> list(state_dict(model.init(fdl.random.key(0))))
        ['0.weight', '0.bias', '2.weight', '2.bias']
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"state_dict: params must be a dict tree, got {type(params).__name__}")
    if state is not None and not isinstance(state, Mapping):
        raise TypeError(f"state_dict: state must be a dict tree, got {type(state).__name__}")
    out: dict[str, torch.Tensor] = {}
    _merge(params, state or {}, "", out)
    return out


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"load_state_dict: '{name}' must be a tensor, got {type(value).__name__}")
    return value.detach() if isinstance(value, torch.nn.Parameter) else value


def load_state_dict(
    state_dict: Mapping[str, Any] | torch.nn.Module,
    model: Layer | None = None,
    *,
    with_state: bool = False,
) -> Any:
    """Rebuild fdl params (and state) from a flat ``state_dict`` such as a torch checkpoint.

    Without ``model`` every key becomes a param (``"fc1.weight"`` ->
    ``params["fc1"]["weight"]``). With ``model`` the keys and shapes are checked
    against ``model.param_shapes()`` and ``model.init_state()``; buffer keys go to
    the state, and floating values are cast to the dtype ``model.init`` would give
    (as torch's ``load_state_dict`` copies into existing params).

    Args:
        state_dict: a ``{key: tensor}`` mapping (``torch.load(...)``,
            ``module.state_dict()``, :func:`state_dict`), or a ``torch.nn.Module``
            whose ``state_dict()`` is read.
        model: the fdl layer the params are for; enables validation and buffers.
        with_state: return ``(params, state)`` instead of ``params``; needs ``model``.
            Without it buffer keys are accepted and left out.

    Returns:
        ``params``, or ``(params, state)`` with ``with_state=True``.

    Raises:
        ValueError: missing or unexpected keys (all listed by their full dotted
            path), or shape mismatches (every one, naming the key and both shapes).
        TypeError: a value that is not a tensor.

    Example:
        >>> import fdl, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> model = fdl.nn.Sequential(fdl.nn.Linear(3, 4), fdl.nn.ReLU(), fdl.nn.Linear(4, 2))
        >>> params = load_state_dict(net.state_dict(), model)
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(model.apply(params, x), net(x))
        True
    """
    if isinstance(state_dict, torch.nn.Module):
        state_dict = state_dict.state_dict()
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            "load_state_dict: expected a mapping of names to tensors, "
            f"got {type(state_dict).__name__}"
        )
    flat = {str(k): _as_tensor(str(k), v) for k, v in state_dict.items()}
    if model is None:
        if with_state:
            raise ValueError(
                "load_state_dict: with_state=True needs the model, to tell buffers from params"
            )
        return _tree.from_flat_dict(flat)

    # flattened in torch's order, so the rebuilt trees keep the layer order
    want_params: dict[str, torch.Tensor] = {}
    want_state: dict[str, torch.Tensor] = {}
    _merge(model.param_shapes(), {}, "", want_params)
    if model.stateful:
        _merge({}, eval_shape(model.init_state), "", want_state)
    wanted = {**want_params, **want_state} if with_state else want_params
    missing = [k for k in wanted if k not in flat]
    unexpected = [k for k in flat if k not in want_params and k not in want_state]
    if missing or unexpected:
        raise ValueError(
            f"load_state_dict: keys do not match {type(model).__name__}: "
            f"missing {missing}, unexpected {unexpected}"
        )
    mismatched = [
        f"size mismatch for '{k}': the checkpoint has shape {tuple(flat[k].shape)}, "
        f"the model expects {tuple(spec.shape)}"
        for k, spec in wanted.items()
        if tuple(flat[k].shape) != tuple(spec.shape)
    ]
    if mismatched:
        raise ValueError("load_state_dict: " + "; ".join(mismatched))
    loaded: dict[str, dict[str, torch.Tensor]] = {"params": {}, "state": {}}
    for part, want in (("params", want_params), ("state", want_state if with_state else {})):
        for k, spec in want.items():
            value = flat[k]
            if value.dtype != spec.dtype and value.is_floating_point() and spec.is_floating_point():
                value = value.to(spec.dtype)
            loaded[part][k] = value
    params = _tree.from_flat_dict(loaded["params"])
    if with_state:
        return params, _tree.from_flat_dict(loaded["state"])
    return params
