"""fdl.optim.lbfgs (optim/quasi_newton.py) against torch.optim.LBFGS, after every step.

Params, loss and counters are compared.

Each (problem, kwargs) entry runs 25 steps of ``opt.step(loss_fn, ...)`` and of
``torch.optim.LBFGS.step(closure)`` from the same float64 params; params, the
returned loss and the evaluation/iteration counters must agree at every step
to 1e-10 (fdl mirrors torch's operations, so they agree to rounding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import fdl
from fdl.optim.quasi_newton import LBFGSState, _cubic_interpolate, strong_wolfe

F64 = torch.float64
STEPS = 25
TOL = {"rtol": 1e-10, "atol": 1e-10}


def _rosenbrock(p: dict) -> torch.Tensor:
    x = p["x"]
    return ((1 - x[:-1]) ** 2).sum() + 100 * ((x[1:] - x[:-1] ** 2) ** 2).sum()


def _data(seed: int, n: int, d: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randint(0, k, (n,), generator=g)
    return x, y


_X, _Y = _data(0, 64, 5, 3)
_XR = torch.randn(40, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
_YR = _XR @ torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 1.0], [3.0, 0.2]], dtype=F64) + 0.3


def _logistic(p: dict) -> torch.Tensor:
    """Softmax regression with a hidden scale leaf and L2 penalty (three leaves, nested)."""
    logits = (_X @ p["fc"]["weight"].T + p["fc"]["bias"]) * p["scale"]
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    nll = -logp.gather(1, _Y[:, None]).mean()
    return nll + 1e-2 * (p["fc"]["weight"] ** 2).sum()


def _least_squares(p: dict) -> torch.Tensor:
    return ((_XR @ p["w"] + p["b"] - _YR) ** 2).mean()


def _init(name: str) -> dict:
    if name == "rosenbrock":
        return {"x": torch.tensor([-1.5, 2.0, -0.5, 1.2], dtype=F64)}
    if name == "logistic":
        g = torch.Generator().manual_seed(2)
        return {
            "fc": {
                "weight": 0.1 * torch.randn(3, 5, generator=g, dtype=F64),
                "bias": torch.zeros(3, dtype=F64),
            },
            "scale": torch.ones((), dtype=F64),
        }
    return {"w": torch.zeros(4, 2, dtype=F64), "b": torch.zeros(2, dtype=F64)}


PROBLEMS: dict[str, Callable[[dict], torch.Tensor]] = {
    "rosenbrock": _rosenbrock,
    "logistic": _logistic,
    "least_squares": _least_squares,
}

SW = {"line_search_fn": "strong_wolfe"}
# (problem, kwargs passed to both fdl.optim.lbfgs and torch.optim.LBFGS)
CASES: list[tuple[str, dict]] = [
    ("rosenbrock", {"max_iter": 3}),
    ("rosenbrock", {"max_iter": 4, "history_size": 2}),
    ("rosenbrock", {"lr": 0.2, "max_iter": 5, "history_size": 3}),
    ("rosenbrock", {"max_iter": 2, "max_eval": 3, "tolerance_change": 1e-7}),
    ("rosenbrock", {**SW, "max_iter": 2}),
    ("rosenbrock", {**SW, "max_iter": 3, "history_size": 2}),
    ("rosenbrock", {**SW, "lr": 0.5, "max_iter": 4, "max_eval": 6}),
    ("rosenbrock", {**SW, "max_iter": 2, "tolerance_grad": 1e-2, "tolerance_change": 1e-4}),
    ("logistic", {"max_iter": 2, "history_size": 4}),
    ("logistic", {"lr": 0.5, "max_iter": 3, "tolerance_grad": 1e-5}),
    ("logistic", {**SW, "max_iter": 2}),
    ("logistic", {**SW, "max_iter": 3, "history_size": 3, "max_eval": 4}),
    ("logistic", {**SW, "maximize": True, "max_iter": 2}),
    ("least_squares", {"max_iter": 1, "history_size": 1}),
    ("least_squares", {"lr": 0.1, "max_iter": 3}),
    ("least_squares", {**SW, "max_iter": 1}),
    ("least_squares", {**SW, "history_size": 1, "max_iter": 2}),
    ("logistic", {"tolerance_change": 1e-4, "tolerance_grad": 1e-3, "max_iter": 6}),
]


def _ids() -> list[str]:
    return [f"{p}-" + ("-".join(f"{k}={v}" for k, v in kw.items()) or "default") for p, kw in CASES]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _loss_for(problem: str, kwargs: dict) -> Callable[[dict], torch.Tensor]:
    fn = PROBLEMS[problem]
    if kwargs.get("maximize"):
        return lambda p: -fn(p)
    return fn


def _torch_run(
    problem: str, kwargs: dict, steps: int
) -> list[tuple[list[torch.Tensor], float, int, int]]:
    loss_fn = _loss_for(problem, kwargs)
    leaves, treedef = fdl.tree.flatten(_init(problem))
    ps = [torch.nn.Parameter(x.clone()) for x in leaves]
    opt = torch.optim.LBFGS(ps, **kwargs)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(fdl.tree.unflatten(treedef, ps))
        loss.backward()
        return loss

    out = []
    for _ in range(steps):
        loss = float(opt.step(closure).detach())
        st = opt.state[ps[0]]
        out.append(([p.detach().clone() for p in ps], loss, st["func_evals"], st["n_iter"]))
    return out


@pytest.mark.parametrize(("problem", "kwargs"), CASES, ids=_ids())
def test_iterates_equal_torch(problem: str, kwargs: dict) -> None:
    expected = _torch_run(problem, kwargs, STEPS)
    loss_fn = _loss_for(problem, kwargs)
    opt = fdl.optim.lbfgs(**kwargs)
    params = _init(problem)
    state = opt.init(params)
    changes, last = 0, fdl.tree.leaves(params)
    for k, (t_params, t_loss, t_evals, t_iter) in enumerate(expected):
        params, state, loss = opt.step(loss_fn, params, state)
        got = fdl.tree.leaves(params)
        for g, e in zip(got, t_params, strict=True):
            torch.testing.assert_close(g, e, **TOL, msg=lambda m, k=k: f"step {k}: {m}")
        torch.testing.assert_close(float(loss), t_loss, **TOL)
        assert (int(state.func_evals), int(state.n_iter)) == (t_evals, t_iter), f"step {k}"
        changes += not all(torch.equal(a, b) for a, b in zip(got, last, strict=True))
        last = got
    assert changes >= 3, f"only {changes} steps moved the params: not a trajectory test"


def test_state_shapes_fixed_and_pure() -> None:
    """Every step returns a state of the same structure, shapes and dtypes; inputs untouched."""
    opt = fdl.optim.lbfgs(history_size=3, max_iter=2, line_search_fn="strong_wolfe")
    params = _init("logistic")
    state = opt.init(params)
    ref = state
    for _ in range(6):
        params, state, _ = fdl.testing.assert_pure(opt.step, _logistic, params, state)
        fdl.tree.check_match(state, ref, check_shapes=True, check_dtypes=True)
    assert isinstance(state, LBFGSState)
    assert int(state.num_old) == 3 and state.old_dirs.shape == (3, 19)


def test_value_and_grad_and_args() -> None:
    """``value_and_grad=True`` takes a (possibly compiled) ``(loss, grads)`` function; args pass."""

    def loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((x @ p["w"] + p["b"] - y) ** 2).mean()

    vg = torch.func.grad_and_value(loss)

    def swapped(p: dict, x: torch.Tensor, y: torch.Tensor) -> tuple:
        g, v = vg(p, x, y)
        return v, g

    opt = fdl.optim.lbfgs(max_iter=3, line_search_fn="strong_wolfe")
    p1 = p2 = _init("least_squares")
    s1 = s2 = opt.init(p1)
    for _ in range(4):
        p1, s1, l1 = opt.step(loss, p1, s1, _XR, _YR)
        p2, s2, l2 = opt.step(swapped, p2, s2, _XR, _YR, value_and_grad=True)
        assert fdl.tree.allclose(p1, p2, rtol=0, atol=0) and float(l1) == float(l2)


def test_stops_at_optimum_like_torch() -> None:
    """At a point where max|g| <= tolerance_grad, a step only counts the evaluation."""
    opt = fdl.optim.lbfgs()
    p = {"x": torch.ones(4, dtype=F64)}
    p2, state, loss = opt.step(_rosenbrock, p, opt.init(p))
    assert float(loss) == 0.0 and torch.equal(p2["x"], p["x"])
    assert (int(state.func_evals), int(state.n_iter)) == (1, 0)


def test_cubic_interpolate_matches_torch() -> None:
    from torch.optim.lbfgs import _cubic_interpolate as ref

    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        v = (torch.randn(6, generator=g, dtype=F64) * 3).tolist()
        bounds = (min(v[0], v[3]) - 1.0, max(v[0], v[3]) + 1.0)
        for b in (None, bounds):
            want = float(ref(*(torch.tensor(x, dtype=F64) for x in v), bounds=b))
            assert _cubic_interpolate(*v, bounds=b) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_strong_wolfe_matches_torch_directly() -> None:
    from torch.optim.lbfgs import _strong_wolfe as ref

    def phi(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        x = x.detach().requires_grad_()
        f = _rosenbrock({"x": x})
        f.backward()
        return float(f.detach()), x.grad

    x0 = torch.tensor([-1.2, 1.0, 0.3], dtype=F64)
    f0, g0 = phi(x0)
    for d in (-g0, -g0 / g0.norm(), torch.tensor([1.0, 0.5, -0.2], dtype=F64) * -g0.sign()):
        gtd = float(g0.dot(d))
        for t0, max_ls in ((1.0, 25), (1e-3, 25), (0.1, 3)):
            want = ref(lambda x, t, d: phi(x + t * d), x0, t0, d, f0, g0, g0.dot(d), max_ls=max_ls)
            got = strong_wolfe(lambda t, d=d: phi(x0 + t * d), t0, d, f0, g0, gtd, max_ls=max_ls)
            assert got[0] == pytest.approx(want[0], rel=1e-12)
            torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)
            assert float(got[2]) == pytest.approx(float(want[2]), rel=1e-12)
            assert got[3] == want[3]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -1.0},
        {"max_iter": 0},
        {"max_eval": 0},
        {"history_size": 0},
        {"line_search_fn": "backtracking"},
        {"lr": torch.ones(2)},
    ],
)
def test_bad_hyperparameters(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="Invalid"):
        fdl.optim.lbfgs(**kwargs)


def test_bad_params_and_state() -> None:
    opt = fdl.optim.lbfgs(history_size=2)
    with pytest.raises(ValueError, match="one dtype"):
        opt.init({"a": torch.zeros(2), "b": torch.zeros(2, dtype=F64)})
    with pytest.raises(ValueError, match="floating"):
        opt.init({"a": torch.zeros(2, dtype=torch.int64)})
    state = opt.init({"x": torch.zeros(3, dtype=F64)})
    with pytest.raises(ValueError, match="lbfgs.step"):
        opt.step(_rosenbrock, {"x": torch.zeros(4, dtype=F64)}, state)
    with pytest.raises(ValueError, match="dtype"):
        opt.step(_rosenbrock, {"x": torch.zeros(3)}, state)
    with pytest.raises(ValueError, match="LBFGSState"):
        opt.step(_rosenbrock, {"x": torch.zeros(3, dtype=F64)}, ())


def test_reexported() -> None:
    from fdl.optim.quasi_newton import lbfgs

    assert fdl.optim.lbfgs is lbfgs
    assert fdl.optim.LBFGSState is LBFGSState
    assert isinstance(fdl.optim.lbfgs(), fdl.optim.Minimizer)


def test_strong_wolfe_zoom_matches_torch() -> None:
    """A wiggly function whose zoom phase moves both bracket ends (the swap of high and low)."""
    from torch.optim.lbfgs import _strong_wolfe as ref

    def phi(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        x = x.detach().requires_grad_()
        f = (torch.sin(3 * x) + 0.1 * x**2).sum()
        f.backward()
        return float(f.detach()), x.grad

    for seed in range(6):
        x0 = torch.randn(3, generator=torch.Generator().manual_seed(seed), dtype=F64)
        f0, g0 = phi(x0)
        d = -g0
        for t0 in (0.3, 1.0, 4.0):
            for c2 in (0.9, 0.1):
                want = ref(lambda x, t, d: phi(x + t * d), x0, t0, d, f0, g0, g0.dot(d), c2=c2)
                got = strong_wolfe(
                    lambda t, d=d, x0=x0: phi(x0 + t * d), t0, d, f0, g0, float(g0.dot(d)), c2=c2
                )
                assert float(got[2]) == pytest.approx(float(want[2]), rel=1e-12, abs=1e-15)
                assert got[0] == pytest.approx(want[0], rel=1e-12) and got[3] == want[3]


def test_compiled_value_and_grad_traces_once() -> None:
    """The loss-and-gradient evaluation compiles once for every evaluation of every step."""
    torch._dynamo.reset()
    frames = []

    def backend(gm: Any, example_inputs: Any) -> Any:
        frames.append(gm)
        return gm.forward

    grad_and_value = torch.func.grad_and_value(_logistic)

    def value_and_grad(p: dict) -> tuple:
        g, v = grad_and_value(p)
        return v, g

    compiled = torch.compile(value_and_grad, backend=backend, fullgraph=True)
    opt = fdl.optim.lbfgs(max_iter=3, history_size=4, line_search_fn="strong_wolfe")
    p1 = p2 = _init("logistic")
    s1 = s2 = opt.init(p1)
    for _ in range(5):
        p1, s1, l1 = opt.step(compiled, p1, s1, value_and_grad=True)
        p2, s2, l2 = opt.step(_logistic, p2, s2)
        fdl.testing.assert_trees_close(p1, p2, rtol=1e-12, atol=1e-12)
    assert int(s1.func_evals) == int(s2.func_evals) > 10
    assert len(frames) == 1
