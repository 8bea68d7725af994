"""fdl.optim.schedules against torch.optim.lr_scheduler: the lr sequence over 300 steps."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import fdl
from fdl.optim import schedules as S

LR = 0.1
TS = torch.optim.lr_scheduler

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
    ["StepLR", "CosineAnnealingWarmRestarts-mult", "OneCycleLR", "SequentialLR-warmup-cosine"],
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
