"""Checking autodiff gradients against central finite differences in float64."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from fdl import random as fr
from fdl.testing._args import FloatInputs, cotangents, fn_name, weighted_sum
from fdl.testing._compare import _check_tolerance_args, _format_failures, _tree_failures

__all__ = ["check_grads"]

_Flat = Callable[..., Any]  # f(*float_leaves) -> output pytree


def _central_differences(s: _Flat, xs: list[torch.Tensor], eps: float) -> list[torch.Tensor]:
    """``(s(x + eps e_k) - s(x - eps e_k)) / (2 eps)`` for every element ``k`` of every leaf."""
    out = []
    for i, x in enumerate(xs):
        g = torch.empty_like(x)
        flat = g.view(-1)
        for k in range(x.numel()):
            bump = torch.zeros_like(x).view(-1)
            bump[k] = eps
            bump = bump.view_as(x)
            hi = [*xs[:i], x + bump, *xs[i + 1 :]]
            lo = [*xs[:i], x - bump, *xs[i + 1 :]]
            flat[k] = (s(*hi) - s(*lo)) / (2 * eps)
        out.append(g)
    return out


def _directions(xs: list[torch.Tensor], n: int, key: torch.Tensor) -> list[torch.Tensor]:
    """``n`` unit-norm random directions per leaf, stacked: shape ``(n, *leaf.shape)``."""
    dirs = []
    for i, x in enumerate(xs):
        v = fr.normal(fr.fold_in(key, i), (n, *x.shape), dtype=torch.float64)
        norm = v.reshape(n, -1).norm(dim=1).clamp_min(1e-30)
        dirs.append(v / norm.reshape(n, *([1] * x.ndim)))
    return dirs


def _directional_fd(
    s: _Flat, xs: list[torch.Tensor], dirs: list[torch.Tensor], eps: float
) -> list[torch.Tensor]:
    """Central differences of ``s`` along each direction of each leaf: ``(n,)`` per leaf."""
    out = []
    for i, x in enumerate(xs):
        vals = []
        for v in dirs[i]:
            hi = [*xs[:i], x + eps * v, *xs[i + 1 :]]
            lo = [*xs[:i], x - eps * v, *xs[i + 1 :]]
            vals.append((s(*hi) - s(*lo)) / (2 * eps))
        out.append(torch.stack(vals))
    return out


def _check_level(
    f: _Flat,
    xs: list[torch.Tensor],
    paths: list[str],
    *,
    level: int,
    eps: float,
    rtol: float,
    atol: float,
    modes: Sequence[str],
    max_elements: int,
    num_directions: int,
    seed: int,
) -> tuple[list[str], Callable[..., Any]]:
    """Check the first derivative of ``f`` at ``xs``; return failures and ``grad`` of ``f``."""
    key = fr.fold_in(fr.key(seed), level)
    out = f(*xs)
    cts = cotangents(out, seed * 1009 + level)

    def s(*ys: torch.Tensor) -> torch.Tensor:
        return weighted_sum(f(*ys), cts)

    argnums = tuple(range(len(xs)))
    grad_s = torch.func.grad(s, argnums=argnums)
    analytic = list(grad_s(*xs))
    what = "gradient" if level == 1 else f"order-{level} derivative (gradient of the gradient)"
    sections = []
    elementwise = sum(x.numel() for x in xs) <= max_elements
    if "rev" in modes:
        if elementwise:
            numeric = _central_differences(s, xs, eps)
            got = dict(zip(paths, analytic, strict=True))
            want = dict(zip(paths, numeric, strict=True))
            label = f"{what} (reverse mode, torch.func.grad) vs central differences"
        else:
            dirs = _directions(xs, num_directions, fr.fold_in(key, 1))
            numeric = _directional_fd(s, xs, dirs, eps)
            got = {
                p: (v.reshape(num_directions, -1) @ g.reshape(-1))
                for p, g, v in zip(paths, analytic, dirs, strict=True)
            }
            want = dict(zip(paths, numeric, strict=True))
            label = (
                f"{what} (reverse mode) along {num_directions} random unit directions per "
                "input vs central differences"
            )
        structure, failures, n = _tree_failures(got, want, rtol=rtol, atol=atol)
        if failures:
            sections.append(_format_failures(label, structure, failures, n))
    if "fwd" in modes:
        dirs = _directions(xs, num_directions, fr.fold_in(key, 2))
        numeric = _directional_fd(s, xs, dirs, eps)
        got = {}
        for i, p in enumerate(paths):
            jvps = []
            for v in dirs[i]:
                tangents = tuple(v if j == i else torch.zeros_like(x) for j, x in enumerate(xs))
                with warnings.catch_warnings():  # torch-internal deprecation noise
                    warnings.filterwarnings("ignore", ".*torch.jit.script", FutureWarning)
                    jvps.append(torch.func.jvp(s, tuple(xs), tangents)[1])
            got[p] = torch.stack(jvps)
        want = dict(zip(paths, numeric, strict=True))
        structure, failures, n = _tree_failures(got, want, rtol=rtol, atol=atol)
        if failures:
            label = (
                f"{what} (forward mode, torch.func.jvp) along {num_directions} random unit "
                "directions per input vs central differences"
            )
            sections.append(_format_failures(label, structure, failures, n))
    return sections, grad_s


def check_grads(
    fn: Callable[..., Any],
    args: tuple,
    *,
    order: int = 1,
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    modes: Sequence[str] = ("rev",),
    max_elements: int = 256,
    num_directions: int = 4,
    seed: int = 0,
) -> None:
    r"""Check ``fn``'s autodiff derivatives against central finite differences in float64.

    Every floating-point tensor leaf of ``args`` (pytrees allowed) is cast to
    float64 and becomes an input ``x_j``; other leaves (integer targets,
    Python numbers) stay fixed. The output (any pytree) is reduced to a
    scalar with a fixed random cotangent ``c``,
    ``s(x) = sum_i sum(out_i(x) * c_i)``, and ``torch.func.grad(s)`` is
    compared with

    .. math:: \frac{s(x + \epsilon e_k) - s(x - \epsilon e_k)}{2 \epsilon}

    for every element ``k`` (when the inputs have at most ``max_elements``
    elements), else along ``num_directions`` random unit directions per input
    leaf. ``order=2`` then repeats the check on the gradient itself,
    ``x -> grad(s)(x)`` (a new cotangent, derivatives by ``torch.func.grad``
    of ``torch.func.grad``): second derivatives against finite differences of
    the gradient; higher orders continue the same way. ``modes`` may add
    ``"fwd"``: directional derivatives from ``torch.func.jvp``.

    Args:
        fn: the function; called as ``fn(*args)``.
        args: a tuple of positional arguments (wrap a single one as ``(x,)``).
        order: the highest derivative order to check (1, 2, ...).
        eps: the finite-difference step; default ``1e-6``.
        rtol: relative tolerance; default ``1e-5``.
        atol: absolute tolerance; default ``1e-6``.
        modes: ``"rev"`` (torch.func.grad) and/or ``"fwd"`` (torch.func.jvp).
        max_elements: above this many input elements, check random directions
            instead of every element.
        num_directions: directions per input leaf for directional checks.
        seed: seed for cotangents and directions.

    Returns:
        None.

    Raises:
        AssertionError: naming the order, the input path and where the
            derivatives and the finite differences disagree.
        TypeError: when ``args`` is not a tuple or there is nothing floating
            to differentiate.

    Note:
        Finite differences are meaningless across a kink (``relu`` at 0,
        ``abs`` at 0, ``max`` with ties): keep inputs away from them.

    Example:
        >>> import torch
        >>> x = torch.tensor([0.5, -1.0, 2.0])
        >>> check_grads(lambda x: torch.sin(x) * x.sum(), (x,), order=2)
        >>> def square(x):
        ...     return x * x.detach()  # bug: the gradient misses a factor 2
        >>> check_grads(square, (x,))
        Traceback (most recent call last):
        ...
        AssertionError: check_grads(square): gradient (reverse mode, torch.func.grad) vs ...
          'args[0]': 3 of 3 elements not close (rtol=1e-05, atol=1e-06) (100%); ...
    """
    if not isinstance(args, tuple):
        raise TypeError(
            "check_grads: args must be a tuple of positional arguments, got "
            f"{type(args).__name__}; wrap a single argument as (x,)"
        )
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"check_grads: order must be an integer >= 1, got {order!r}")
    bad_modes = set(modes) - {"rev", "fwd"}
    if bad_modes or not modes:
        raise ValueError(f"check_grads: modes must be 'rev' and/or 'fwd', got {tuple(modes)}")
    _check_tolerance_args(rtol, atol)
    eps = 1e-6 if eps is None else float(eps)
    if not eps > 0:
        raise ValueError(f"check_grads: eps must be positive, got {eps}")
    rtol = 1e-5 if rtol is None else float(rtol)
    atol = 1e-6 if atol is None else float(atol)

    inputs = FloatInputs(args)
    if not inputs.tensors:
        raise TypeError("check_grads: args hold no floating-point tensor to differentiate")
    xs = [x.detach().to(torch.float64) for x in inputs.tensors]

    def f(*ys: torch.Tensor) -> Any:
        return fn(*inputs.rebuild(list(ys)))

    name = fn_name(fn, "fn")
    for level in range(1, order + 1):
        sections, grad_s = _check_level(
            f,
            xs,
            inputs.paths,
            level=level,
            eps=eps,
            rtol=rtol,
            atol=atol,
            modes=modes,
            max_elements=max_elements,
            num_directions=num_directions,
            seed=seed,
        )
        if sections:
            raise AssertionError(
                f"check_grads({name}): " + "\n".join(sections) + f"\n(eps={eps:g}, float64)"
            )
        f = grad_s
