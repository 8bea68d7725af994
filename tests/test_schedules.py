"""fdl.optim.schedules against torch.optim.lr_scheduler: the lr sequence over 300 steps."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import fdl
from fdl.optim import schedules as S
from fdl.optim import swa

LR = 0.1
TS = torch.optim.lr_scheduler
swa_utils = torch.optim.swa_utils

# name -> (fdl schedule, torch scheduler factory taking the optimizer)
SCHEDULES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[Any], Any]]] = {
    "StepLR": (S.StepLR(LR, step_size=30, gamma=0.5), lambda o: TS.StepLR(o, 30, gamma=0.5)),
    "StepLR-default": (S.StepLR(LR, step_size=7), lambda o: TS.StepLR(o, 7)),
    "MultiStepLR": (
        S.MultiStepLR(LR, milestones=[50, 120, 120, 200], gamma=0.3),
        lambda o: TS.MultiStepLR(o, [50, 120, 120, 200], gamma=0.3),
    ),
    "ExponentialLR": (S.ExponentialLR(LR, gamma=0.99), lambda o: TS.ExponentialLR(o, 0.99)),
    "CosineAnnealingLR": (
        S.CosineAnnealingLR(LR, T_max=70, eta_min=0.001),
        lambda o: TS.CosineAnnealingLR(o, T_max=70, eta_min=0.001),
    ),
    "CosineAnnealingWarmRestarts": (
        S.CosineAnnealingWarmRestarts(LR, T_0=25, eta_min=0.01),
        lambda o: TS.CosineAnnealingWarmRestarts(o, T_0=25, eta_min=0.01),
    ),
    "CosineAnnealingWarmRestarts-mult": (
        S.CosineAnnealingWarmRestarts(LR, T_0=10, T_mult=2),
        lambda o: TS.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2),
    ),
    "LinearLR": (
        S.LinearLR(LR, start_factor=0.2, end_factor=0.9, total_iters=40),
        lambda o: TS.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=40),
    ),
    "LinearLR-default": (S.LinearLR(LR), lambda o: TS.LinearLR(o)),
    "ConstantLR": (
        S.ConstantLR(LR, factor=0.25, total_iters=17),
        lambda o: TS.ConstantLR(o, factor=0.25, total_iters=17),
    ),
    "PolynomialLR": (
        S.PolynomialLR(LR, total_iters=150, power=2.0),
        lambda o: TS.PolynomialLR(o, total_iters=150, power=2.0),
    ),
    "LambdaLR": (
        S.LambdaLR(LR, lambda k: 1.0 / (1.0 + 0.05 * k)),
        lambda o: TS.LambdaLR(o, lambda k: 1.0 / (1.0 + 0.05 * k)),
    ),
    "OneCycleLR": (
        S.OneCycleLR(LR, total_steps=300),
        lambda o: TS.OneCycleLR(o, LR, total_steps=300, cycle_momentum=False),
    ),
    "OneCycleLR-linear-3phase": (
        S.OneCycleLR(
            LR,
            epochs=10,
            steps_per_epoch=30,
            pct_start=0.25,
            anneal_strategy="linear",
            div_factor=10.0,
            final_div_factor=100.0,
            three_phase=True,
        ),
        lambda o: TS.OneCycleLR(
            o,
            LR,
            epochs=10,
            steps_per_epoch=30,
            pct_start=0.25,
            anneal_strategy="linear",
            div_factor=10.0,
            final_div_factor=100.0,
            three_phase=True,
            cycle_momentum=False,
        ),
    ),
    "SequentialLR-warmup-cosine": (
        S.SequentialLR(
            [S.LinearLR(LR, 0.01, total_iters=20), S.CosineAnnealingLR(LR, 280)], milestones=[20]
        ),
        lambda o: TS.SequentialLR(
            o, [TS.LinearLR(o, 0.01, total_iters=20), TS.CosineAnnealingLR(o, 280)], [20]
        ),
    ),
    "SequentialLR-three": (
        S.SequentialLR(
            [S.ConstantLR(LR, 0.1, 10), S.ExponentialLR(LR, 0.98), S.StepLR(LR, 40, 0.5)],
            milestones=[10, 150],
        ),
        lambda o: TS.SequentialLR(
            o,
            [TS.ConstantLR(o, 0.1, 10), TS.ExponentialLR(o, 0.98), TS.StepLR(o, 40, 0.5)],
            [10, 150],
        ),
    ),
    "MultiplicativeLR": (
        S.MultiplicativeLR(LR, lambda k: 0.99 if k % 3 else 1.01, total_steps=400),
        lambda o: TS.MultiplicativeLR(o, lambda k: 0.99 if k % 3 else 1.01),
    ),
    "MultiplicativeLR-short-table": (
        S.MultiplicativeLR(LR, lambda k: 0.95, total_steps=299),
        lambda o: TS.MultiplicativeLR(o, lambda k: 0.95),
    ),
    "CyclicLR-triangular": (
        S.CyclicLR(0.01, LR, step_size_up=20),
        lambda o: TS.CyclicLR(o, 0.01, LR, step_size_up=20),
    ),
    "CyclicLR-triangular2-asym": (
        S.CyclicLR(0.001, LR, step_size_up=13, step_size_down=29, mode="triangular2"),
        lambda o: TS.CyclicLR(o, 0.001, LR, step_size_up=13, step_size_down=29, mode="triangular2"),
    ),
    "CyclicLR-exp_range": (
        S.CyclicLR(0.002, LR, step_size_up=17, mode="exp_range", gamma=0.995),
        lambda o: TS.CyclicLR(o, 0.002, LR, step_size_up=17, mode="exp_range", gamma=0.995),
    ),
    "CyclicLR-scale_fn-cycle": (
        S.CyclicLR(0.01, LR, step_size_up=10, scale_fn=lambda x: 0.8**x),
        lambda o: TS.CyclicLR(o, 0.01, LR, step_size_up=10, scale_fn=lambda x: 0.8**x),
    ),
    "CyclicLR-scale_fn-iterations": (
        S.CyclicLR(
            0.01,
            LR,
            step_size_up=8,
            step_size_down=4,
            scale_fn=lambda x: 1 / (1 + 0.01 * x),
            scale_mode="iterations",
        ),
        lambda o: TS.CyclicLR(
            o,
            0.01,
            LR,
            step_size_up=8,
            step_size_down=4,
            scale_fn=lambda x: 1 / (1 + 0.01 * x),
            scale_mode="iterations",
        ),
    ),
    "ChainedScheduler-constant-exponential": (
        S.ChainedScheduler([S.ConstantLR(LR, 0.1, 20), S.ExponentialLR(LR, 0.99)]),
        lambda o: TS.ChainedScheduler([TS.ConstantLR(o, 0.1, 20), TS.ExponentialLR(o, 0.99)]),
    ),
    "ChainedScheduler-three": (
        S.ChainedScheduler(
            [
                S.LinearLR(LR, 0.2, total_iters=30),
                S.MultiStepLR(LR, [50, 150], 0.5),
                S.MultiplicativeLR(LR, lambda k: 0.998, total_steps=300),
            ]
        ),
        lambda o: TS.ChainedScheduler(
            [
                TS.LinearLR(o, 0.2, total_iters=30),
                TS.MultiStepLR(o, [50, 150], 0.5),
                TS.MultiplicativeLR(o, lambda k: 0.998),
            ]
        ),
    ),
    "SWALR-cos": (swa.SWALR(LR, swa_lr=0.01), lambda o: swa_utils.SWALR(o, swa_lr=0.01)),
    "SWALR-linear": (
        swa.SWALR(LR, swa_lr=0.02, anneal_epochs=50, anneal_strategy="linear"),
        lambda o: swa_utils.SWALR(o, swa_lr=0.02, anneal_epochs=50, anneal_strategy="linear"),
    ),
}

STEPS = 300


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _torch_lrs(make: Callable[[Any], Any], steps: int = STEPS) -> list[float]:
    """The lr torch's optimizer uses at each of ``steps`` ``opt.step(); sched.step()`` rounds."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=LR)
    sched = make(opt)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if len(lrs) < steps:
                sched.step()
    return lrs


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_matches_torch_lr_sequence(name: str) -> None:
    schedule, make = SCHEDULES[name]
    expected = torch.tensor(_torch_lrs(make), dtype=torch.float64)
    actual = torch.stack([schedule(torch.tensor(k)) for k in range(STEPS)])
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_vectorised_over_counts(name: str) -> None:
    """A schedule is elementwise in the count: a batch of counts gives the batch of lrs."""
    schedule, _ = SCHEDULES[name]
    counts = torch.arange(STEPS)
    one_by_one = torch.stack([schedule(torch.tensor(k)) for k in range(STEPS)])
    torch.testing.assert_close(schedule(counts), one_by_one, rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    "name",
    [
        "StepLR",
        "CosineAnnealingWarmRestarts-mult",
        "OneCycleLR",
        "SequentialLR-warmup-cosine",
        "MultiplicativeLR",
        "CyclicLR-triangular2-asym",
        "ChainedScheduler-three",
        "SWALR-cos",
    ],
)
def test_compiles_without_recompiling(name: str) -> None:
    schedule, _ = SCHEDULES[name]
    torch._dynamo.reset()
    frames = []

    def backend(gm: Any, example_inputs: Any) -> Any:
        frames.append(gm)
        return gm.forward

    compiled = torch.compile(schedule.__call__, backend=backend, fullgraph=True)
    for k in range(20):
        torch.testing.assert_close(compiled(torch.tensor(k)), schedule(torch.tensor(k)))
    assert len(frames) == 1


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (S.StepLR, {"lr": -0.1, "step_size": 3}),
        (S.StepLR, {"lr": 0.1, "step_size": 0}),
        (S.LinearLR, {"lr": 0.1, "start_factor": 0.0}),
        (S.LinearLR, {"lr": 0.1, "end_factor": 1.5}),
        (S.ConstantLR, {"lr": 0.1, "factor": 2.0}),
        (S.CosineAnnealingWarmRestarts, {"lr": 0.1, "T_0": 0}),
        (S.CosineAnnealingWarmRestarts, {"lr": 0.1, "T_0": 5, "T_mult": 0}),
        (S.OneCycleLR, {"max_lr": 0.1}),
        (S.OneCycleLR, {"max_lr": 0.1, "total_steps": 10, "anneal_strategy": "exp"}),
        (S.OneCycleLR, {"max_lr": 0.1, "total_steps": 10, "pct_start": 1.5}),
        (S.SequentialLR, {"schedules": [S.ExponentialLR(0.1, 0.9)], "milestones": [3]}),
        (S.MultiplicativeLR, {"lr": -0.1, "lr_lambda": lambda k: 1.0}),
        (S.MultiplicativeLR, {"lr": 0.1, "lr_lambda": lambda k: 1.0, "total_steps": -1}),
        (S.CyclicLR, {"base_lr": 0.1, "max_lr": 1.0, "mode": "sine"}),
        (S.CyclicLR, {"base_lr": 0.1, "max_lr": 1.0, "step_size_up": 0}),
        (S.CyclicLR, {"base_lr": -0.1, "max_lr": 1.0}),
        (S.CyclicLR, {"base_lr": 0.1, "max_lr": 1.0, "scale_fn": abs, "scale_mode": "epoch"}),
        (S.ChainedScheduler, {"schedules": []}),
        (S.ChainedScheduler, {"schedules": [S.StepLR(0.1, 3), S.StepLR(0.2, 3)]}),
        (S.ChainedScheduler, {"schedules": [S.StepLR(0.1, 3), S.ReduceLROnPlateau(0.1)]}),
        (S.ReduceLROnPlateau, {"lr": 0.1, "factor": 1.0}),
        (S.ReduceLROnPlateau, {"lr": 0.1, "mode": "median"}),
        (S.ReduceLROnPlateau, {"lr": 0.1, "threshold_mode": "pct"}),
        (S.ReduceLROnPlateau, {"lr": -0.1}),
        (swa.SWALR, {"lr": 0.1, "swa_lr": 0.01, "anneal_strategy": "exp"}),
        (swa.SWALR, {"lr": 0.1, "swa_lr": 0.01, "anneal_epochs": -1}),
    ],
)
def test_bad_arguments(factory: Any, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        factory(**kwargs)


def test_usable_as_optimizer_lr() -> None:
    """The schedule sees 0 at the first update, 1 at the second, ..."""
    opt = fdl.optim.sgd(lr=S.MultiStepLR(1.0, milestones=[1, 2], gamma=0.5))
    params = {"w": torch.zeros(())}
    state = opt.init(params)
    seen = []
    for _ in range(3):
        updates, state = opt.update({"w": torch.ones(())}, state, params)
        seen.append(-float(updates["w"]))
    assert seen == [1.0, 0.5, 0.25]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"three_phase": True, "anneal_strategy": "linear", "pct_start": 0.25}],
    ids=["cos", "three-phase-linear"],
)
@pytest.mark.parametrize("torch_opt", ["SGD", "Adam"])
def test_one_cycle_momentum_equals_torch(kwargs: dict, torch_opt: str) -> None:
    """``OneCycleLR.momentum`` is torch's cycled ``momentum`` (SGD) or ``betas[0]`` (Adam)."""
    schedule = S.OneCycleLR(LR, total_steps=STEPS, base_momentum=0.8, max_momentum=0.9, **kwargs)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = getattr(torch.optim, torch_opt)([param], lr=LR)
    sched = TS.OneCycleLR(opt, LR, total_steps=STEPS, base_momentum=0.8, max_momentum=0.9, **kwargs)
    group = opt.param_groups[0]
    expected = []
    for _ in range(STEPS):
        expected.append(group["momentum"] if torch_opt == "SGD" else group["betas"][0])
        opt.step()
        sched.step()
    got = schedule.momentum(torch.arange(STEPS))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)


# ReduceLROnPlateau: name -> (kwargs for fdl's and torch's, the metric at epoch k)
PLATEAUS: dict[str, tuple[dict, Callable[[int], float]]] = {
    "min-rel-default": ({}, lambda k: max(1.0 / (1.0 + 0.02 * k), 0.4 + 0.001 * (k % 7))),
    "min-rel-patience-cooldown": (
        {"factor": 0.5, "patience": 3, "cooldown": 4, "threshold": 1e-2},
        lambda k: 1.0 / (1.0 + 0.02 * k) + 0.05 * math.sin(0.7 * k),
    ),
    "min-abs-min_lr": (
        {"factor": 0.3, "patience": 2, "threshold": 0.01, "threshold_mode": "abs", "min_lr": 1e-3},
        lambda k: math.floor(k / 25) * -0.1 + 0.02 * math.cos(k),
    ),
    "max-rel-eps": (
        {"mode": "max", "factor": 0.7, "patience": 5, "cooldown": 1, "eps": 2e-3},
        lambda k: 1.0 - math.exp(-0.03 * k) + 0.01 * math.sin(1.3 * k),
    ),
    "max-abs-patience0": (
        {"mode": "max", "patience": 0, "threshold": 0.05, "threshold_mode": "abs", "cooldown": 2},
        lambda k: -3.0 + 0.001 * k + 0.2 * math.sin(0.3 * k),
    ),
}


def _torch_plateau(kwargs: dict, metric: Callable[[int], float]) -> list[tuple]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=LR)
    sched = TS.ReduceLROnPlateau(opt, **kwargs)
    out = []
    for k in range(STEPS):
        sched.step(metric(k))
        out.append(
            (opt.param_groups[0]["lr"], sched.best, sched.num_bad_epochs, sched.cooldown_counter)
        )
    return out


@pytest.mark.parametrize("name", list(PLATEAUS))
def test_plateau_matches_torch(name: str) -> None:
    kwargs, metric = PLATEAUS[name]
    plateau = S.ReduceLROnPlateau(LR, **kwargs)
    state = plateau.init()
    expected = _torch_plateau(kwargs, metric)
    reductions = 0
    for k, (lr, best, bad, cooldown) in enumerate(expected):
        new = fdl.testing.assert_pure(
            plateau.update, state, torch.tensor(metric(k), dtype=torch.float64)
        )
        reductions += bool(new.lr < state.lr)
        state = new
        got = (
            float(plateau.get_last_lr(state)),
            float(state.best),
            int(state.num_bad_epochs),
            int(state.cooldown_counter),
        )
        assert got[0] == pytest.approx(lr, rel=1e-12, abs=1e-12), f"epoch {k}"
        assert got[1:] == (best, bad, cooldown), f"epoch {k}"
    assert reductions >= 2, "the metric never plateaus: not a test of the reduction"
    assert state.lr.dtype == state.best.dtype == torch.float64
    assert state.num_bad_epochs.dtype == state.cooldown_counter.dtype == torch.int64


def test_plateau_compiles_once() -> None:
    """A compiled update traces once, through improvements, reductions and cooldown."""
    kwargs, metric = PLATEAUS["min-rel-patience-cooldown"]
    plateau = S.ReduceLROnPlateau(LR, **kwargs)
    torch._dynamo.reset()
    frames = []

    def backend(gm: Any, example_inputs: Any) -> Any:
        frames.append(gm)
        return gm.forward

    compiled = torch.compile(plateau.update, backend=backend, fullgraph=True)
    state = eager = plateau.init()
    for k in range(40):
        m = torch.tensor(metric(k), dtype=torch.float64)
        state, eager = compiled(state, m), plateau.update(eager, m)
        assert fdl.tree.allclose(state, eager, rtol=0, atol=0)
    assert float(state.lr) < LR and len(frames) == 1


def test_plateau_drives_an_optimizer() -> None:
    """The documented recipe: an lr=1 optimizer's updates scaled by the plateau's rate."""
    plateau = S.ReduceLROnPlateau(LR, factor=0.5, patience=0)
    opt = fdl.optim.sgd(lr=1.0, momentum=0.9)
    params = {"w": torch.ones(3, dtype=torch.float64)}
    p_t = torch.nn.Parameter(params["w"].clone())
    t_opt = torch.optim.SGD([p_t], lr=LR, momentum=0.9)
    t_sched = TS.ReduceLROnPlateau(t_opt, factor=0.5, patience=0)
    state, pstate = opt.init(params), plateau.init()
    for k in range(10):
        grads = {"w": params["w"] * 2}
        updates, state = opt.update(grads, state, params)
        params = fdl.optim.apply_updates(params, fdl.tree.scale(updates, pstate.lr))
        p_t.grad = p_t.detach() * 2
        t_opt.step()
        metric = 1.0 if k % 3 else 2.0
        pstate = plateau.update(pstate, metric)
        t_sched.step(metric)
        torch.testing.assert_close(params["w"], p_t.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"step_size_up": 15},
        {"step_size_up": 7, "step_size_down": 20, "mode": "exp_range", "gamma": 0.99},
        {"step_size_up": 9, "mode": "triangular2", "base_momentum": 0.7, "max_momentum": 0.95},
    ],
    ids=["triangular", "exp_range", "triangular2"],
)
@pytest.mark.parametrize("torch_opt", ["SGD", "Adam"])
def test_cyclic_momentum_equals_torch(kwargs: dict, torch_opt: str) -> None:
    """``CyclicLR.momentum`` is torch's cycled ``momentum`` (SGD) or ``betas[0]`` (Adam)."""
    schedule = S.CyclicLR(0.01, LR, **kwargs)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = getattr(torch.optim, torch_opt)([param], lr=LR)
    sched = TS.CyclicLR(opt, 0.01, LR, **kwargs)
    group = opt.param_groups[0]
    expected = []
    for _ in range(STEPS):
        expected.append(group["momentum"] if torch_opt == "SGD" else group["betas"][0])
        opt.step()
        sched.step()
    got = schedule.momentum(torch.arange(STEPS))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)


def test_cyclic_without_momentum() -> None:
    with pytest.raises(ValueError, match="cycle_momentum"):
        S.CyclicLR(0.01, LR, cycle_momentum=False).momentum(torch.tensor(0))
