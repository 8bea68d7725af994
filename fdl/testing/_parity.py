"""Comparing a function with a reference: values and gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fdl import tree as ft
from fdl.testing._args import FloatInputs, cotangents, fn_name, weighted_sum
from fdl.testing._compare import _check_tolerance_args, _format_failures, _tree_failures

__all__ = ["assert_parity"]


def _run(
    fn: Callable[..., Any], inputs: FloatInputs, grads: bool
) -> tuple[Any, list[torch.Tensor]]:
    """Call ``fn`` on fresh copies of the inputs; return output and differentiated leaves."""
    fresh = FloatInputs(inputs.copies())
    if not grads:
        with torch.no_grad():
            return fn(*fresh.rebuild(fresh.tensors)), []
    leaves = [x.requires_grad_(True) for x in fresh.tensors]
    return fn(*fresh.rebuild(leaves)), leaves


def _same_shapes(a: Any, b: Any) -> bool:
    for x, y in zip(ft.leaves(a), ft.leaves(b), strict=True):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor) and x.shape != y.shape:
            return False
    return True


def _gradients(out: Any, leaves: list[torch.Tensor], cts: list) -> list[torch.Tensor]:
    s = weighted_sum(out, cts)
    if not leaves:
        return []
    if not s.requires_grad:  # nothing in the output depends on the inputs
        return [torch.zeros_like(x) for x in leaves]
    gs = torch.autograd.grad(s, leaves, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, gs, strict=True)]


def assert_parity(
    fn: Callable[..., Any],
    reference: Callable[..., Any],
    *args: Any,
    grads: bool = True,
    rtol: float | None = None,
    atol: float | None = None,
    grad_rtol: float | None = None,
    grad_atol: float | None = None,
    check_dtype: bool = True,
    seed: int = 0,
) -> None:
    r"""Assert ``fn(*args)`` equals ``reference(*args)`` in value and gradient.

    Both functions run on their own copies of ``args`` (pytrees allowed), so
    neither can disturb the other. Outputs (pytrees allowed) are compared with
    :func:`assert_trees_close`. With ``grads=True`` both are then
    differentiated with respect to every floating-point tensor leaf ``x_j`` of
    ``args``, through the scalar

    .. math:: s = \sum_i \mathrm{sum}(out_i \cdot c_i)

    where ``c_i`` is a fixed standard-normal cotangent (drawn from
    ``fdl.random.key(seed)``) with the shape of floating output leaf ``i``, so
    every output element contributes and errors cannot cancel. The gradients
    ``ds/dx_j`` (computed with autograd) are compared leaf by leaf.

    A failure reports the value differences and the gradient differences,
    each failing leaf by path (outputs by their path in the output tree,
    gradients by input path such as ``args[0].fc.weight``) with the number of
    mismatched elements and the largest absolute/relative error and where it
    occurs.

    Args:
        fn: the function under test.
        reference: the function it must equal (usually the torch one).
        *args: positional arguments for both.
        grads: also compare gradients.
        rtol: relative tolerance for values; ``None`` for the dtype default
            (see :func:`default_tolerances`).
        atol: absolute tolerance for values; ``None`` for the dtype default.
        grad_rtol: relative tolerance for gradients; defaults to ``rtol``.
        grad_atol: absolute tolerance for gradients; defaults to ``atol``.
        check_dtype: fail when output dtypes differ.
        seed: seed of the cotangents.

    Returns:
        None.

    Raises:
        AssertionError: when values or gradients differ.

    Note:
        Outputs without a floating-point tensor (class indices, counts) are
        compared in value only. An input that ``fn`` does not use gets a zero
        gradient, so a function that drops the dependence on an input
        (``detach``, ``no_grad``) is caught wherever the reference depends on
        it.

    Example:
        >>> import torch
        >>> def softplus(x, beta):
        ...     return torch.log1p(torch.exp(beta * x)) / beta
        >>> x = torch.linspace(-3, 3, 7, dtype=torch.float64)
        >>> assert_parity(softplus, torch.nn.functional.softplus, x, 2.0)
        >>> assert_parity(lambda x, b: x.clamp(min=0), torch.nn.functional.softplus, x, 2.0,
        ...               atol=0.1)
        Traceback (most recent call last):
        ...
        AssertionError: fn and softplus differ
        values: 1 of 1 leaves differ
          '<root>': 1 of 7 elements not close (rtol=1e-10, atol=0.1) (14.3%); max abs error 0.34...
        gradients of sum(output * cotangent) w.r.t. the floating inputs: 1 of 1 leaves differ
          'args[0]': ...
    """
    _check_tolerance_args(rtol, atol)
    _check_tolerance_args(grad_rtol, grad_atol)
    grad_rtol = rtol if grad_rtol is None else grad_rtol
    grad_atol = atol if grad_atol is None else grad_atol
    inputs = FloatInputs(args)
    out_f, leaves_f = _run(fn, inputs, grads)
    out_r, leaves_r = _run(reference, inputs, grads)
    header = f"{fn_name(fn, 'fn')} and {fn_name(reference, 'reference')} differ"

    structure, failures, n = _tree_failures(
        out_f, out_r, rtol=rtol, atol=atol, check_dtype=check_dtype
    )
    sections = []
    if structure is not None or failures:
        sections.append(_format_failures("values", structure, failures, n))
    cts: list = []
    if grads and structure is None and _same_shapes(out_f, out_r):
        cts = cotangents(out_r, seed)
    if any(c is not None for c in cts):  # outputs with no floating tensor have no gradient
        g_f = inputs.as_dict(_gradients(out_f, leaves_f, cts))
        g_r = inputs.as_dict(_gradients(out_r, leaves_r, cts))
        g_structure, g_failures, g_n = _tree_failures(
            g_f, g_r, rtol=grad_rtol, atol=grad_atol, check_dtype=check_dtype
        )
        if g_failures:
            sections.append(
                _format_failures(
                    "gradients of sum(output * cotangent) w.r.t. the floating inputs",
                    g_structure,
                    g_failures,
                    g_n,
                )
            )
    if sections:
        raise AssertionError("\n".join([header, *sections]))
