"""Parity checks shared by the catalogue's layer tests (tests/test_nn_catalog_*.py).

A layer is checked against the torch module it is named after: fdl's params are the torch
module's parameters under the same names (so ``state_dict`` keys agree), the outputs and
the gradients with respect to every floating input and every parameter must agree to
float64 1e-10 / float32 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

import fdl
from fdl.testing import assert_trees_close

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def close(
    actual: Any, expected: Any, dtype: torch.dtype, msg: str = "", tol: float | None = None
) -> None:
    tol = TOL[dtype] if tol is None else max(tol, TOL[dtype])
    assert_trees_close(actual, expected, rtol=tol, atol=tol, msg=msg)


def _leaves(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)]


def _vjp(out: Any, wrt: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of ``sum(out * c)`` for a fixed random cotangent ``c`` per float output."""
    g = torch.Generator().manual_seed(7)
    total = 0.0
    for y in _leaves(out):
        if y.is_floating_point() and y.requires_grad:
            total = total + (y * (torch.rand(y.shape, generator=g, dtype=y.dtype) + 0.5)).sum()
    if not wrt or not isinstance(total, torch.Tensor):
        return []
    grads = torch.autograd.grad(total, list(wrt), allow_unused=True)
    return [torch.zeros_like(w) if gr is None else gr for w, gr in zip(wrt, grads, strict=True)]


def _detached(out: Any) -> list[torch.Tensor]:
    return [x.detach() for x in _leaves(out)]


def _fresh(x: torch.Tensor | None) -> torch.Tensor | None:
    """A leaf copy of an input (``None`` passes through), differentiable if floating."""
    if x is None:
        return None
    return x.detach().clone().requires_grad_(x.is_floating_point())


def torch_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def check_layer(
    layer: fdl.nn.Layer,
    module: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    dtype: torch.dtype,
    *,
    apply_kwargs: dict | None = None,
    params: dict | None = None,
    compare: Callable[[Any], Any] | None = None,
    grad_tol: float | None = None,
) -> None:
    """``layer.apply(params, *inputs)`` equals ``module(*inputs)`` in value and gradients."""
    module = module.to(dtype)
    base = torch_params(module) if params is None else params
    assert set(base) == set(layer.init(fdl.random.key(0))), "parameter names differ from torch's"

    def run(fn, p):
        xs = [_fresh(x) for x in inputs]
        out = fn(p, xs)
        wrt = [x for x in xs if x is not None and x.requires_grad] + [
            v for v in p.values() if v.requires_grad
        ]
        return out, _vjp(out, wrt)

    t_out, t_grads = run(lambda p, xs: module(*xs), dict(module.named_parameters()))
    f_params = {
        k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in base.items()
    }
    f_out, f_grads = run(lambda p, xs: layer.apply(p, *xs, **(apply_kwargs or {})), f_params)
    if compare is not None:
        t_out, f_out = compare(t_out), compare(f_out)
    for a, b in zip(_leaves(f_out), _leaves(t_out), strict=True):
        assert a.shape == b.shape, f"shape {tuple(a.shape)} != torch's {tuple(b.shape)}"
        assert a.dtype == b.dtype
    close(
        [x.detach() for x in _leaves(f_out)], [x.detach() for x in _leaves(t_out)], dtype, "value"
    )
    close(f_grads, t_grads, dtype, "gradients", grad_tol)


def check_fn(
    fdl_fn: Callable[..., Any],
    torch_fn: Callable[..., Any],
    inputs: Sequence[torch.Tensor],
    kwargs: dict,
    dtype: torch.dtype,
    grad_tol: float | None = None,
) -> None:
    """``fdl_fn(*inputs, **kwargs)`` equals ``torch_fn(...)`` in value and gradients."""

    def run(fn):
        xs = [_fresh(x) for x in inputs]
        out = fn(*xs, **kwargs)
        return out, _vjp(out, [x for x in xs if x is not None and x.requires_grad])

    f_out, f_grads = run(fdl_fn)
    t_out, t_grads = run(torch_fn)
    for a, b in zip(_leaves(f_out), _leaves(t_out), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    close(
        [x.detach() for x in _leaves(f_out)], [x.detach() for x in _leaves(t_out)], dtype, "value"
    )
    close(f_grads, t_grads, dtype, "gradients", grad_tol)


def state_dict_keys(layer: fdl.nn.Layer) -> set[str]:
    """The names fdl stores: params and (for stateful layers) buffers."""
    keys = set(layer.init(fdl.random.key(0)))
    if getattr(layer, "stateful", False):
        keys |= set(layer.init_state())
    return keys
