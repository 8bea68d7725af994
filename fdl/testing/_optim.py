"""Training one small problem with an fdl optimizer and a torch.optim one, step by step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from fdl import random as fr
from fdl import tree as ft
from fdl._leaf import describe as _kind
from fdl.testing._compare import _check_tolerance_args, _format_failures, _tree_failures
from fdl.testing._pure import assert_pure

__all__ = ["assert_optimizer_parity", "optimizer_problem"]

Loss = Callable[[Any], torch.Tensor]


def optimizer_problem(params: Any = None, *, seed: int = 0) -> tuple[Any, Loss]:
    r"""The default problem of :func:`assert_optimizer_parity`: ``(params, loss)``.

    Without ``params``: a 5-8-2 tanh MLP regression in float64 on 32 fixed
    samples, params ``{"0": {"weight", "bias"}, "2": {"weight", "bias"}}``
    (``torch.nn.Sequential`` names) and
    ``loss(p) = mean((tanh(x W_0^T + b_0) W_2^T + b_2 - y)^2)``.

    With ``params`` (any pytree of floating tensors): a smooth, non-convex
    loss with curvature that differs per element, so every element moves
    differently,
    ``loss(p) = sum_j sum(a_j (p_j - t_j)^2 + 0.1 cos(3 p_j))`` with fixed
    random ``a_j`` in ``[0.5, 2)`` and ``t_j``.

    Args:
        params: a pytree of floating tensors, or ``None`` for the MLP.
        seed: seed of the data / the fixed constants.

    Returns:
        ``(params, loss)``; ``loss`` maps a params pytree to a scalar.

    Example:
        >>> import fdl
        >>> params, loss = optimizer_problem()
        >>> sorted(fdl.tree.to_flat_dict(params))
        ['0.bias', '0.weight', '2.bias', '2.weight']
        >>> loss(params).dtype
        torch.float64
    """
    key = fr.key(seed)
    if params is None:
        kx, ky, k0, k1, k2, k3 = fr.split(key, 6)
        f64 = torch.float64
        x = fr.normal(kx, (32, 5), dtype=f64)
        y = fr.normal(ky, (32, 2), dtype=f64)
        params = {
            "0": {
                "weight": fr.uniform(k0, (8, 5), -0.45, 0.45, dtype=f64),
                "bias": fr.uniform(k1, (8,), -0.45, 0.45, dtype=f64),
            },
            "2": {
                "weight": fr.uniform(k2, (2, 8), -0.35, 0.35, dtype=f64),
                "bias": fr.uniform(k3, (2,), -0.35, 0.35, dtype=f64),
            },
        }

        def mlp_loss(p: Any) -> torch.Tensor:
            h = torch.tanh(x @ p["0"]["weight"].T + p["0"]["bias"])
            out = h @ p["2"]["weight"].T + p["2"]["bias"]
            return ((out - y) ** 2).mean()

        return params, mlp_loss

    lvs, treedef = ft.flatten(params)
    for x in lvs:
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            raise TypeError(
                f"optimizer_problem: params must be a pytree of floating tensors, got a "
                f"{_kind(x)} leaf"
            )
    consts = []
    for i, x in enumerate(lvs):
        ka, kt = fr.split(fr.fold_in(key, i))
        consts.append(
            (
                fr.uniform(ka, tuple(x.shape), 0.5, 2.0, dtype=torch.float64).to(x.dtype),
                fr.normal(kt, tuple(x.shape), dtype=torch.float64).to(x.dtype),
            )
        )

    def quad_loss(p: Any) -> torch.Tensor:
        total = torch.zeros((), dtype=lvs[0].dtype) if lvs else torch.zeros(())
        for leaf, (a, t) in zip(ft.leaves(p), consts, strict=True):
            total = total + (a * (leaf - t) ** 2 + 0.1 * torch.cos(3 * leaf)).sum()
        return total

    return params, quad_loss


def _apply_updates() -> Callable[[Any, Any], Any]:
    try:
        from fdl.optim import apply_updates  # noqa: PLC0415 - fdl.optim is optional here
    except (ImportError, AttributeError):
        return lambda params, updates: ft.map(lambda p, u: p + u, params, updates)
    return apply_updates


def assert_optimizer_parity(
    fdl_optimizer: Any,
    torch_optimizer_cls: type[torch.optim.Optimizer],
    torch_kwargs: Mapping[str, Any] | None = None,
    *,
    steps: int = 100,
    params: Any = None,
    loss: Loss | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    torch_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    check_pure: bool = True,
) -> None:
    """Train one problem with an fdl optimizer and a torch.optim one; compare every step.

    Both start from identical params. Each step, fdl runs
    ``grads = torch.func.grad(loss)(params)``,
    ``updates, state = fdl_optimizer.update(grads, state, params)``,
    ``params = apply_updates(params, updates)`` (``fdl.optim.apply_updates``);
    torch runs ``zero_grad()``, ``loss(params).backward()``, ``step()`` (then
    ``scheduler.step()`` when ``torch_scheduler`` is given). After every step
    the two params trees are compared with :func:`assert_trees_close`; the
    first divergence fails, naming the step and each diverging parameter.

    Args:
        fdl_optimizer: a ``GradientTransformation`` (``init``/``update``).
        torch_optimizer_cls: e.g. ``torch.optim.Adam``.
        torch_kwargs: keyword arguments for ``torch_optimizer_cls``.
        steps: number of steps.
        params: initial params (a pytree of floating tensors); default the
            float64 MLP of :func:`optimizer_problem`.
        loss: ``loss(params) -> scalar``; default the loss of
            :func:`optimizer_problem` for ``params``.
        rtol: relative tolerance; ``None`` for the dtype default (float64:
            ``1e-10``).
        atol: absolute tolerance; ``None`` for the dtype default (float64:
            ``1e-12``).
        torch_scheduler: ``optimizer -> LRScheduler`` for the torch side, e.g.
            ``lambda o: torch.optim.lr_scheduler.StepLR(o, 10)``, stepped once
            per step; give the fdl optimizer the matching schedule.
        check_pure: run the first ``update`` under :func:`assert_pure` (it
            must not modify grads, state or params in place).

    Returns:
        None.

    Raises:
        AssertionError: at the first step where the params differ.
        TypeError: when ``fdl_optimizer`` has no ``init``/``update``, or
            ``loss`` is given without ``params``.

    Example:
        >>> import torch, fdl
        >>> from typing import NamedTuple
        >>> class GT(NamedTuple):
        ...     init: object
        ...     update: object
        >>> def my_sgd(lr):
        ...     def update(grads, state, params=None):
        ...         return fdl.tree.scale(grads, -lr), state
        ...     return GT(lambda params: (), update)
        >>> assert_optimizer_parity(my_sgd(0.1), torch.optim.SGD, {"lr": 0.1}, steps=10)
        >>> assert_optimizer_parity(my_sgd(0.1), torch.optim.SGD, {"lr": 0.1, "momentum": 0.5},
        ...                         steps=10)
        Traceback (most recent call last):
        ...
        AssertionError: fdl optimizer and SGD diverge at step 2 of 10 ...
        step 2: 4 of 4 leaves differ
          '0.bias': ...
    """
    if not (
        callable(getattr(fdl_optimizer, "init", None))
        and callable(getattr(fdl_optimizer, "update", None))
    ):
        raise TypeError(
            "assert_optimizer_parity: fdl_optimizer must be a GradientTransformation with "
            f"init and update, got {type(fdl_optimizer).__name__}"
        )
    if loss is not None and params is None:
        raise TypeError("assert_optimizer_parity: a loss needs its params; pass params= too")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"assert_optimizer_parity: steps must be an integer >= 1, got {steps!r}")
    _check_tolerance_args(rtol, atol)
    if loss is None:
        params, loss = optimizer_problem(params)
    apply_updates = _apply_updates()
    name = getattr(torch_optimizer_cls, "__name__", "torch optimizer")

    lvs, treedef = ft.flatten(params)
    torch_leaves = [x.detach().clone().requires_grad_(True) for x in lvs]
    torch_params = ft.unflatten(treedef, torch_leaves)
    torch_opt = torch_optimizer_cls(torch_leaves, **dict(torch_kwargs or {}))
    scheduler = torch_scheduler(torch_opt) if torch_scheduler is not None else None

    fdl_params = ft.map(lambda x: x.detach().clone(), params)
    state = fdl_optimizer.init(fdl_params)
    grad_fn = torch.func.grad(loss)
    for step in range(1, steps + 1):
        grads = grad_fn(fdl_params)
        if check_pure and step == 1:
            updates, state = assert_pure(fdl_optimizer.update, grads, state, fdl_params)
        else:
            updates, state = fdl_optimizer.update(grads, state, fdl_params)
        fdl_params = apply_updates(fdl_params, updates)

        torch_opt.zero_grad()
        loss(torch_params).backward()
        torch_opt.step()
        if scheduler is not None:
            scheduler.step()

        current = ft.map(lambda x: x.detach(), torch_params)
        structure, failures, n = _tree_failures(fdl_params, current, rtol=rtol, atol=atol)
        if structure is not None or failures:
            where = ", ".join(f"'{p}'" for p, _ in failures) or "the tree structure"
            since = "from the first step" if step == 1 else f"(equal up to step {step - 1})"
            raise AssertionError(
                f"fdl optimizer and {name} diverge at step {step} of {steps} {since}; "
                f"first diverging parameter {where.split(', ')[0]} (all: {where}). "
                "Actual is fdl, expected is torch.\n"
                + _format_failures(f"step {step}", structure, failures, n)
            )
