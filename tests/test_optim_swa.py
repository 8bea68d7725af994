"""fdl.optim.swa against torch.optim.swa_utils: SWALR, AveragedModel (SWA/EMA), update_bn.

Float64 throughout; averages agree to 1e-12 (a few roundings per update),
BatchNorm statistics to 1e-12 (one multiplication and division by the
momentum per batch on top of torch's formula).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.optim import swa_utils as TSWA

import fdl
from fdl.optim import swa

F64 = torch.float64
TOL = {"rtol": 1e-12, "atol": 1e-12}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------- SWALR

SWALRS = [
    {"swa_lr": 0.01},
    {"swa_lr": 0.05, "anneal_epochs": 37, "anneal_strategy": "linear"},
    {"swa_lr": 0.2, "anneal_epochs": 1},
    {"swa_lr": 0.03, "anneal_epochs": 0, "anneal_strategy": "linear"},
    {"swa_lr": 0.03, "anneal_epochs": 0},
]


@pytest.mark.parametrize(
    "kwargs", SWALRS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items())
)
def test_swalr_equals_torch(kwargs: dict) -> None:
    lr, steps = 0.1, 300
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = TSWA.SWALR(opt, **kwargs)
    expected = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    got = swa.SWALR(lr, **kwargs)(torch.arange(steps))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- AveragedModel


def _torch_model(momentum: float | None = 0.1) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6),
        torch.nn.BatchNorm1d(6, momentum=momentum),
        torch.nn.ReLU(),
        torch.nn.Linear(6, 3),
        torch.nn.BatchNorm1d(3, momentum=momentum),
    ).to(F64)


def _trees(model: torch.nn.Module) -> tuple[dict, dict]:
    params = fdl.tree.from_flat_dict({k: v.detach().clone() for k, v in model.named_parameters()})
    buffers = fdl.tree.from_flat_dict({k: v.detach().clone() for k, v in model.named_buffers()})
    return params, buffers


def _train_a_little(model: torch.nn.Module, gen: torch.Generator) -> None:
    """One SGD step in train mode: moves the params and the BatchNorm buffers."""
    x = torch.randn(16, 4, generator=gen, dtype=F64)
    model.train()
    loss = (model(x) ** 2).mean()
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad


# name -> (kwargs for torch's AveragedModel, kwargs for fdl's)
AVERAGERS: dict[str, tuple[dict, dict]] = {
    "swa-default": ({}, {}),
    "swa-avg_fn": ({"avg_fn": TSWA.get_swa_avg_fn()}, {"avg_fn": swa.get_swa_avg_fn()}),
    "swa-multi": (
        {"multi_avg_fn": TSWA.get_swa_multi_avg_fn()},
        {"multi_avg_fn": swa.get_swa_multi_avg_fn()},
    ),
    "ema-avg_fn": ({"avg_fn": TSWA.get_ema_avg_fn(0.9)}, {"avg_fn": swa.get_ema_avg_fn(0.9)}),
    "ema-multi": (
        {"multi_avg_fn": TSWA.get_ema_multi_avg_fn(0.8)},
        {"multi_avg_fn": swa.get_ema_multi_avg_fn(0.8)},
    ),
    "ema-multi-use_buffers": (
        {"multi_avg_fn": TSWA.get_ema_multi_avg_fn(0.7), "use_buffers": True},
        {"multi_avg_fn": swa.get_ema_multi_avg_fn(0.7), "use_buffers": True},
    ),
    "swa-use_buffers": ({"use_buffers": True}, {"use_buffers": True}),
    "ema-avg_fn-use_buffers": (
        {"avg_fn": TSWA.get_ema_avg_fn(0.95), "use_buffers": True},
        {"avg_fn": swa.get_ema_avg_fn(0.95), "use_buffers": True},
    ),
}


@pytest.mark.parametrize("name", list(AVERAGERS))
def test_averaged_model_equals_torch(name: str) -> None:
    torch_kwargs, fdl_kwargs = AVERAGERS[name]
    model = _torch_model()
    gen = torch.Generator().manual_seed(1)
    t_avg = TSWA.AveragedModel(model, **torch_kwargs)
    averager = swa.AveragedModel(**fdl_kwargs)
    params, buffers = _trees(model)
    state = averager.init(params, buffers)
    for k in range(12):
        _train_a_little(model, gen)
        t_avg.update_parameters(model)
        params, buffers = _trees(model)
        state = fdl.testing.assert_pure(averager.update, state, params, buffers)
        want_p, want_b = _trees(t_avg.module)
        fdl.testing.assert_trees_close(state.params, want_p, **TOL)
        fdl.testing.assert_trees_close(state.buffers, want_b, **TOL)
        assert int(state.n_averaged) == int(t_avg.n_averaged) == k + 1
        assert state.buffers["1"]["num_batches_tracked"].dtype == torch.int64


def test_averaged_model_without_buffers_and_compiled() -> None:
    """Params only; a compiled update traces once over a changing ``n_averaged``."""
    torch._dynamo.reset()
    frames = []

    def backend(gm: Any, example_inputs: Any) -> Any:
        frames.append(gm)
        return gm.forward

    averager = swa.AveragedModel(multi_avg_fn=swa.get_ema_multi_avg_fn(0.9))
    compiled = torch.compile(averager.update, backend=backend, fullgraph=True)
    params = {"w": torch.zeros(3, dtype=F64), "b": torch.zeros((), dtype=F64)}
    state = eager = averager.init(params)
    for k in range(20):
        params = fdl.tree.map(lambda x, k=k: x + k, params)
        state = compiled(state, params)
        eager = averager.update(eager, params)
    fdl.testing.assert_trees_close(state.params, eager.params, rtol=0, atol=0)
    assert state.buffers is None and int(state.n_averaged) == 20
    assert len(frames) == 1


def test_averaged_model_errors() -> None:
    with pytest.raises(ValueError, match="Only one"):
        swa.AveragedModel(avg_fn=swa.get_swa_avg_fn(), multi_avg_fn=swa.get_swa_multi_avg_fn())
    with pytest.raises(ValueError, match="decay"):
        swa.get_ema_avg_fn(1.5)
    with pytest.raises(ValueError, match="decay"):
        swa.get_ema_multi_avg_fn(-0.1)
    averager = swa.AveragedModel()
    state = averager.init({"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="'v'"):
        averager.update(state, {"v": torch.zeros(2)})


# ---------------------------------------------------------------- update_bn


def _fdl_model(momentum: float | None) -> fdl.nn.Sequential:
    return fdl.nn.Sequential(
        fdl.nn.Linear(4, 6, dtype=F64),
        fdl.nn.BatchNorm1d(6, momentum=momentum, dtype=F64),
        fdl.nn.ReLU(),
        fdl.nn.Linear(6, 3, dtype=F64),
        fdl.nn.BatchNorm1d(3, momentum=momentum, dtype=F64),
    )


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("tuples", [False, True], ids=["tensors", "tuples"])
def test_update_bn_equals_torch(momentum: float | None, tuples: bool) -> None:
    model = _torch_model(momentum)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):  # non-trivial running statistics to start from
        _train_a_little(model, gen)
    xs = [torch.randn(8 + i, 4, generator=gen, dtype=F64) * (1 + i) + i for i in range(5)]
    batches = [(x, torch.zeros(len(x))) for x in xs] if tuples else xs
    params, buffers = _trees(model)
    net = _fdl_model(momentum)

    def apply_fn(p: dict, x: torch.Tensor, s: dict) -> tuple:
        return net.apply(p, x, state=s, train=True)

    got = fdl.testing.assert_pure(
        swa.update_bn, apply_fn, params, buffers, batches, momentum=momentum
    )
    model.eval()
    TSWA.update_bn(batches, model)
    _, want = _trees(model)
    fdl.testing.assert_trees_close(got, want, **TOL)
    assert not model.training


def test_update_bn_no_batches_and_no_bn() -> None:
    net = _fdl_model(0.1)
    params, state = net.init(fdl.random.key(0)), net.init_state()
    state = fdl.tree.map(lambda x: x + 3, state)
    got = swa.update_bn(lambda p, x, s: net.apply(p, x, state=s, train=True), params, state, [])
    assert float(got["1"]["running_var"].sum()) == 6.0
    assert int(got["4"]["num_batches_tracked"]) == 0
    assert swa.update_bn(lambda p, x, s: (x, s), {}, {"other": torch.ones(1)}, [torch.ones(1)]) == {
        "other": torch.ones(1)
    }


def test_update_bn_bad_momentum() -> None:
    with pytest.raises(ValueError, match="momentum"):
        swa.update_bn(lambda p, x, s: (x, s), {}, {}, [], momentum=0.0)


def test_reexported() -> None:
    for name in swa.__all__:
        assert getattr(fdl.optim, name) is getattr(swa, name)
    assert isinstance(swa.SWALR(0.1, 0.01), Callable)  # type: ignore[arg-type]
