"""Trajectory parity of every fdl optimizer with torch.optim, step by step.

Each optimizer is trained for 100 steps from identical params with its own
gradients (``fdl.testing.assert_optimizer_parity``); params must equal torch's
at every step (float64 to 1e-10; float32 to the trajectory bound of
``_float32_tolerance``, about 1e-4 over 100 steps). Over each optimizer's grid
every keyword argument takes a non-default value at least once.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import fdl
from fdl.optim import schedules as S
from fdl.testing import assert_optimizer_parity

# (fdl optimizer, torch optimizer, [kwargs, ...]): the kwargs are passed to both.
OPTIMIZERS: dict[str, tuple[Callable[..., Any], type[torch.optim.Optimizer], list[dict]]] = {
    "sgd": (
        fdl.optim.sgd,
        torch.optim.SGD,
        [
            {},
            {"lr": 0.05, "momentum": 0.9},
            {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1},
            {"lr": 0.02, "momentum": 0.8, "nesterov": True, "weight_decay": 0.05, "maximize": True},
        ],
    ),
    "adam": (
        fdl.optim.adam,
        torch.optim.Adam,
        [
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1, "amsgrad": True},
            {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
        ],
    ),
    "adamw": (
        fdl.optim.adamw,
        torch.optim.AdamW,
        [
            {},
            {"lr": 0.01, "betas": (0.85, 0.98), "eps": 1e-7, "weight_decay": 0.2, "amsgrad": True},
            {"lr": 0.01, "maximize": True},
        ],
    ),
    "rmsprop": (
        fdl.optim.rmsprop,
        torch.optim.RMSprop,
        [
            {},
            {
                "lr": 0.005,
                "alpha": 0.9,
                "eps": 1e-6,
                "weight_decay": 0.1,
                "momentum": 0.9,
                "centered": True,
            },
            {"lr": 0.005, "momentum": 0.5, "maximize": True},
        ],
    ),
    "adagrad": (
        fdl.optim.adagrad,
        torch.optim.Adagrad,
        [
            {},
            {
                "lr": 0.05,
                "lr_decay": 0.01,
                "weight_decay": 0.1,
                "initial_accumulator_value": 0.1,
                "eps": 1e-8,
                "maximize": True,
            },
        ],
    ),
    "adamax": (
        fdl.optim.adamax,
        torch.optim.Adamax,
        [
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1, "maximize": True},
        ],
    ),
    "nadam": (
        fdl.optim.nadam,
        torch.optim.NAdam,
        [
            {},
            {
                "lr": 0.002,
                "betas": (0.9, 0.99),
                "eps": 1e-6,
                "weight_decay": 0.1,
                "momentum_decay": 0.01,
            },
            {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
        ],
    ),
    "radam": (
        fdl.optim.radam,
        torch.optim.RAdam,
        [
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
            {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True},
        ],
    ),
    "adadelta": (
        fdl.optim.adadelta,
        torch.optim.Adadelta,
        [
            {},
            {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.1, "maximize": True},
        ],
    ),
    "rprop": (
        fdl.optim.rprop,
        torch.optim.Rprop,
        [
            {},
            {"lr": 0.05, "etas": (0.4, 1.3), "step_sizes": (1e-4, 0.2), "maximize": True},
        ],
    ),
    "asgd": (
        fdl.optim.asgd,
        torch.optim.ASGD,
        [
            {},
            {"lr": 0.05, "lambd": 1e-2, "alpha": 0.6, "t0": 10, "weight_decay": 0.1},
            {"lr": 0.02, "t0": 30.5, "maximize": True},
        ],
    ),
    "adafactor": (
        fdl.optim.adafactor,
        torch.optim.Adafactor,
        [
            {},
            {"lr": 0.05, "beta2_decay": -0.6, "eps": (1e-20, 1e-2), "d": 1.5, "weight_decay": 0.01},
            {"lr": 0.2, "eps": (None, 0.5), "maximize": True},  # 1/sqrt(t) caps lr from t = 26,
        ],
    ),
    "muon": (
        fdl.optim.muon,
        torch.optim.Muon,
        [
            {},
            {"lr": 0.02, "adjust_lr_fn": "original"},
            {
                "lr": 0.02,
                "weight_decay": 0.05,
                "momentum": 0.9,
                "nesterov": False,
                "ns_coefficients": (3.0, -3.2, 1.2),
                "eps": 1e-5,
                "ns_steps": 4,
                "adjust_lr_fn": "match_rms_adamw",
            },
            {"lr": 0.01, "adjust_lr_fn": "spectral_unclamped"},
        ],
    ),
}
# keyword arguments fdl adds (torch has no counterpart): exempt from the grid and defaults checks
FDL_ONLY_KWARGS: dict[str, set[str]] = {"muon": {"ns_dtype"}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: intra-op threads only add contention on a shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


CASES = [
    pytest.param(name, i, id=f"{name}-{i}")
    for name, (_, _, grid) in OPTIMIZERS.items()
    for i in range(len(grid))
]


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch.optim keeps scalar state (NAdam's mu_product) in the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _problem(kwargs: dict, params: Any = None) -> dict:
    """Params and loss for ``assert_optimizer_parity``.

    With ``maximize`` the loss is negated, so that ascent is as stable as descent
    (ascending the plain loss diverges and amplifies rounding exponentially).
    """
    params, loss = fdl.testing.optimizer_problem(params)
    if kwargs.get("maximize"):
        return {"params": params, "loss": lambda p: -loss(p)}
    return {"params": params, "loss": loss}


# Error model of a float32 trajectory (docs/testing.md, "Tolerances"). One step of
# an update rule rounds about a dozen times in each implementation, in different
# orders (vector width, FMA contraction and reduction order follow the CPU
# capability: default, AVX2 and AVX-512 kernels differ), and adaptive denominators
# amplify it (centered RMSprop's v - avg**2 cancels), so one step's params differ
# by up to KAPPA * eps relative. At these learning rates the loss contracts
# differences (|1 - lr * curvature| < 1), so they add at most linearly over steps.
# Measured worst over the grid: 1.9e-6 (AVX2), 1.3e-5 (AVX-512) after 100 steps.
_F32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7
_KAPPA = 8


def _float32_tolerance(steps: int) -> float:
    """rtol = atol for a ``steps``-long float32 trajectory: 100 steps give 9.5e-5."""
    return steps * _KAPPA * _F32_EPS


def _float32_problem() -> Any:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(6, 4, generator=g),
        "b": torch.randn(4, generator=g),
        "nested": {"v": torch.randn(3, generator=g)},
    }


# Muon accepts matrices only (as torch.optim.Muon): its problems have 2-D params alone.
MATRICES_ONLY = {"muon"}


def _matrices(dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "tall": torch.randn(6, 4, generator=g, dtype=dtype),
        "wide": torch.randn(3, 5, generator=g, dtype=dtype),
        "nested": {"square": torch.randn(4, 4, generator=g, dtype=dtype)},
    }


# Muon's Newton-Schulz runs in bfloat16 (as torch's): an input one float32 ulp away from
# torch's may round to the neighbouring bfloat16 value (probability ~2^-16 per element
# and step once the trajectories differ by rounding), and the iteration amplifies that
# 2^-8 change by up to a^k ~ 3.4^5 in ill-conditioned directions, so a float32 trajectory
# is compared over 10 steps (p(any flip) < 1% for the 56 elements); float64 over 100
# steps (flips need a 2^-45 coincidence).
# Adafactor's steps are normalised (RMS-clipped, scaled by RMS(θ)), so the loss does not
# contract rounding differences: they grow geometrically (from synced states one step
# differs by <= 4e-16 relative in float64) and a float32 trajectory leaves the bound
# after about 30 steps. Both are also compared step by step from torch's params over
# 100 steps (test_synced_steps_float32).
FLOAT32_STEPS = {"muon": 10, "adafactor": 20}
SYNCED = ["adafactor", "muon"]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_grid_covers_every_keyword(name: str) -> None:
    """Every keyword of the fdl optimizer takes a non-default value somewhere in its grid."""
    fn, _, grid = OPTIMIZERS[name]
    sig = inspect.signature(fn)
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD or p.name in FDL_ONLY_KWARGS.get(name, ()):
            continue
        assert any(p.name in kw and kw[p.name] != p.default for kw in grid), p.name


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_defaults_match_torch(name: str) -> None:
    """fdl's defaults are torch's defaults."""
    fn, torch_cls, _ = OPTIMIZERS[name]
    torch_sig = inspect.signature(torch_cls.__init__).parameters
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not p.VAR_KEYWORD and p.name not in FDL_ONLY_KWARGS.get(name, ()):
            assert p.name in torch_sig, p.name
            assert torch_sig[p.name].default == p.default, p.name


@pytest.mark.parametrize(("name", "i"), CASES)
def test_trajectory_float64(name: str, i: int) -> None:
    fn, torch_cls, grid = OPTIMIZERS[name]
    kwargs = grid[i]
    with _default_dtype(torch.float64):
        problem = _problem(kwargs, _matrices(torch.float64) if name in MATRICES_ONLY else None)
        assert_optimizer_parity(fn(**kwargs), torch_cls, kwargs, steps=100, **problem)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_trajectory_float32(name: str) -> None:
    """float32 on a second problem, with the grid entry that changes most keywords."""
    fn, torch_cls, grid = OPTIMIZERS[name]
    kwargs = max(grid, key=len)
    steps = FLOAT32_STEPS.get(name, 100)
    assert_optimizer_parity(
        fn(**kwargs),
        torch_cls,
        kwargs,
        steps=steps,
        params=_matrices(torch.float32) if name in MATRICES_ONLY else _float32_problem(),
        rtol=_float32_tolerance(steps),
        atol=_float32_tolerance(steps),
    )


@pytest.mark.parametrize("name", SYNCED)
def test_synced_steps_float32(name: str) -> None:
    """Each of 100 float32 steps, from torch's params and fdl's own state, equals torch's step.

    For optimizers whose trajectories separate by rounding (see ``FLOAT32_STEPS``): the
    params are reset to torch's after every step, so each comparison is one step's
    rounding (tolerance of a 1-step trajectory).
    """
    fn, torch_cls, grid = OPTIMIZERS[name]
    kwargs = max(grid, key=len)
    params = _matrices(torch.float32) if name in MATRICES_ONLY else _float32_problem()
    params, loss = fdl.testing.optimizer_problem(params)
    leaves, treedef = fdl.tree.flatten(params)
    torch_params = [torch.nn.Parameter(x.clone()) for x in leaves]
    torch_opt = torch_cls(torch_params, **kwargs)
    opt = fn(**kwargs)
    state = opt.init(params)
    tol = _float32_tolerance(1)
    for step in range(100):
        p = fdl.tree.unflatten(treedef, [x.detach().clone() for x in torch_params])
        grads = torch.func.grad(loss)(p)
        updates, state = opt.update(grads, state, p)
        ours = fdl.optim.apply_updates(p, updates)
        for x, g in zip(torch_params, fdl.tree.leaves(grads), strict=True):
            x.grad = g.clone()
        torch_opt.step()
        theirs = fdl.tree.unflatten(treedef, [x.detach() for x in torch_params])
        fdl.testing.assert_trees_close(ours, theirs, rtol=tol, atol=tol, msg=f"step {step + 1}")


_ONE_CYCLE = S.OneCycleLR(0.05, total_steps=100, base_momentum=0.8, max_momentum=0.9)


def _torch_one_cycle(o: torch.optim.Optimizer) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's counterpart of ``_ONE_CYCLE``, cycling momentum (its default)."""
    return torch.optim.lr_scheduler.OneCycleLR(
        o, 0.05, total_steps=100, base_momentum=0.8, max_momentum=0.9
    )


# (fdl schedule, torch scheduler factory, fdl optimizer, torch optimizer, kwargs)
SCHEDULED = {
    "adam+warmup-cosine": (
        S.SequentialLR(
            [S.LinearLR(0.01, 0.1, total_iters=10), S.CosineAnnealingLR(0.01, 90)], milestones=[10]
        ),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, 0.1, total_iters=10),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, 90),
            ],
            milestones=[10],
        ),
        fdl.optim.adam,
        torch.optim.Adam,
        {"lr": 0.01, "weight_decay": 0.01},
    ),
    "sgd+steplr": (
        S.StepLR(0.05, step_size=7, gamma=0.5),
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
        fdl.optim.sgd,
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    ),
    "adagrad+exponential": (
        S.ExponentialLR(0.05, gamma=0.98),
        lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.98),
        fdl.optim.adagrad,
        torch.optim.Adagrad,
        {"lr": 0.05, "lr_decay": 0.01},
    ),
    "adamw+onecycle": (
        S.OneCycleLR(0.02, total_steps=100),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, 0.02, total_steps=100, cycle_momentum=False
        ),
        fdl.optim.adamw,
        torch.optim.AdamW,
        {"lr": 0.02},
    ),
    # torch's default cycle_momentum=True: fdl passes the schedule's momentum explicitly
    "sgd+onecycle-momentum": (
        _ONE_CYCLE,
        _torch_one_cycle,
        fdl.optim.sgd,
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    ),
    "sgd+onecycle-momentum-dampening": (
        _ONE_CYCLE,
        _torch_one_cycle,
        fdl.optim.sgd,
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.3},
    ),
    "adam+onecycle-beta1": (
        _ONE_CYCLE,
        _torch_one_cycle,
        fdl.optim.adam,
        torch.optim.Adam,
        {"lr": 0.05, "weight_decay": 0.01},
    ),
}
# fdl-only keyword arguments: the cycled momentum torch's scheduler sets on the optimizer
FDL_ONLY = {
    "sgd+onecycle-momentum": {"momentum": _ONE_CYCLE.momentum},
    "sgd+onecycle-momentum-dampening": {"momentum": _ONE_CYCLE.momentum},
    "adam+onecycle-beta1": {"betas": (_ONE_CYCLE.momentum, 0.999)},
}


@pytest.mark.parametrize("name", list(SCHEDULED))
def test_schedule_plus_optimizer(name: str) -> None:
    """An fdl schedule as ``lr`` reproduces torch's ``opt.step(); sched.step()`` loop."""
    schedule, make_sched, fn, torch_cls, kwargs = SCHEDULED[name]
    with _default_dtype(torch.float64):
        assert_optimizer_parity(
            fn(**{**kwargs, "lr": schedule, **FDL_ONLY.get(name, {})}),
            torch_cls,
            kwargs,
            steps=100,
            torch_scheduler=make_sched,
        )


@pytest.mark.parametrize("kwargs", [{"t0": 10}, {"lr": 0.05, "lambd": 1e-2, "t0": 30.5}])
def test_asgd_average_equals_torch_ax(kwargs: dict) -> None:
    """ASGD's averaged params (``fdl.optim.averaged_params``) equal torch's ``ax`` at every step.

    The parity tests compare the iterates; this compares the average, which starts to
    differ from the iterate once ``t - 1 > t0``.
    """
    with _default_dtype(torch.float64):
        params, loss = fdl.testing.optimizer_problem()
        leaves, treedef = fdl.tree.flatten(params)
        torch_params = [torch.nn.Parameter(x.clone()) for x in leaves]
        torch_opt = torch.optim.ASGD(torch_params, **kwargs)
        opt = fdl.optim.asgd(**kwargs)
        state = opt.init(params)
        moved = False
        for step in range(100):
            updates, state = opt.update(torch.func.grad(loss)(params), state, params)
            params = fdl.optim.apply_updates(params, updates)
            torch_opt.zero_grad()
            loss(fdl.tree.unflatten(treedef, torch_params)).backward()
            torch_opt.step()
            ax = fdl.tree.unflatten(treedef, [torch_opt.state[p]["ax"] for p in torch_params])
            fdl.testing.assert_trees_close(
                fdl.optim.averaged_params(state), ax, rtol=1e-10, atol=1e-12, msg=f"step {step}"
            )
            moved |= not fdl.tree.allclose(ax, params, rtol=0, atol=1e-6)
        assert moved  # the average left the iterate: the comparison saw averaging


# SparseAdam takes sparse gradients only: torch is fed fdl's dense gradients as
# ``g.to_sparse()`` (the non-zero entries), on an embedding-style problem where each step
# looks up a few rows, so most rows' gradients are exactly zero.
SPARSE_ADAM_GRID = [
    {},
    {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "maximize": True},
]


def _lookup_problem(dtype: torch.dtype) -> tuple[dict, Callable[[Any, int], torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    params = {
        "emb": torch.randn(12, 4, generator=g, dtype=dtype),
        "head": {"w": torch.randn(4, 3, generator=g, dtype=dtype)},
    }
    rows = torch.randint(0, 12, (100, 5), generator=g)  # the rows each step looks up
    y = torch.randn(100, 5, 3, generator=g, dtype=dtype)

    def loss(p: Any, k: int) -> torch.Tensor:
        out = torch.tanh(p["emb"][rows[k]]) @ p["head"]["w"]  # (5, 4) @ (4, 3) -> (5, 3)
        return ((out - y[k]) ** 2).mean()

    return params, loss


def test_sparse_adam_defaults_match_torch() -> None:
    sig = inspect.signature(torch.optim.SparseAdam.__init__).parameters
    for p in inspect.signature(fdl.optim.sparse_adam).parameters.values():
        if p.kind is not p.VAR_KEYWORD:
            assert sig[p.name].default == p.default, p.name
            assert any(p.name in kw and kw[p.name] != p.default for kw in SPARSE_ADAM_GRID)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("i", range(len(SPARSE_ADAM_GRID)))
def test_sparse_adam_equals_torch_given_sparse_grads(i: int, dtype: torch.dtype) -> None:
    """100 steps; params and both moments equal torch's (float64 1e-10, float32 its bound)."""
    kwargs = SPARSE_ADAM_GRID[i]
    sign = -1.0 if kwargs.get("maximize") else 1.0  # ascend the negated loss: stable
    tol = 1e-10 if dtype == torch.float64 else _float32_tolerance(100)
    with _default_dtype(dtype):
        params, loss = _lookup_problem(dtype)
        leaves, treedef = fdl.tree.flatten(params)
        torch_params = [torch.nn.Parameter(x.clone()) for x in leaves]
        torch_opt = torch.optim.SparseAdam(torch_params, **kwargs)
        opt = fdl.optim.sparse_adam(**kwargs)
        state = opt.init(params)
        untouched = 0
        for k in range(100):
            grads = torch.func.grad(lambda p, k=k: sign * loss(p, k))(params)
            untouched += int((grads["emb"] == 0).all(dim=1).sum())
            updates, state = opt.update(grads, state, params)
            params = fdl.optim.apply_updates(params, updates)
            for x, gr in zip(torch_params, fdl.tree.leaves(grads), strict=True):
                x.grad = gr.to_sparse()
            torch_opt.step()
            theirs = fdl.tree.unflatten(treedef, [x.detach() for x in torch_params])
            fdl.testing.assert_trees_close(params, theirs, rtol=tol, atol=tol, msg=f"step {k}")
        moments = [torch_opt.state[x]["exp_avg_sq"] for x in torch_params]
        inner = state[-2]  # scale_by_sparse_adam's state
        fdl.testing.assert_trees_close(
            inner.nu, fdl.tree.unflatten(treedef, moments), rtol=tol, atol=tol
        )
        assert untouched > 100 * 12 // 2  # most rows had no gradient: sparsity was exercised
