"""Tests for fdl.testing: every helper passes on equal inputs and fails, with an
informative message, on a deliberately perturbed input."""

from __future__ import annotations

import math
import pathlib
import re
from typing import NamedTuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fdl
from fdl.testing import assert_pure, assert_trees_close, default_tolerances
from fdl.testing import strategies as fst


class Pair(NamedTuple):
    mu: dict
    count: torch.Tensor


def _plain() -> torch.Tensor:
    return torch.linspace(-1.0, 2.0, 12, dtype=torch.float64).reshape(3, 4)


def _dict() -> dict:
    return {"fc": {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, "scale": torch.tensor(2.0)}


def _namedtuple() -> Pair:
    return Pair({"w": torch.arange(6.0).reshape(2, 3)}, torch.tensor(3))


def _list() -> list:
    return [torch.ones(4, dtype=torch.float64), [torch.zeros(2, 2), torch.tensor([1, 2, 3])]]


# (name, tree factory, path of the leaf to perturb, flat index into that leaf)
TREES = [
    ("tensor", _plain, "<root>", 5),
    ("dict", _dict, "fc.weight", 4),
    ("namedtuple", _namedtuple, "mu.w", 2),
    ("list", _list, "1.0", 3),
]


def _perturb(tree, path: str, index: int, delta: float = 0.5):
    """A copy of ``tree`` with one element of the leaf at ``path`` moved by ``delta``."""

    def bump(p, x):
        x = x.clone()
        if (p or "<root>") == path:
            flat = x.view(-1)
            flat[index] = flat[index] + delta
        return x

    return fdl.tree.map_with_path(bump, tree)


# ---------------------------------------------------------------------------
# Registry of functions for assert_parity and check_grads
# ---------------------------------------------------------------------------


def _softplus(x, beta=1.0):
    return torch.log1p(torch.exp(beta * x)) / beta


def _linear_tree(p, batch):
    y = batch["x"] @ p["w"].T + p["b"]
    return {"y": torch.tanh(y), "norm": (y**2).sum()}


def _linear_tree_ref(p, batch):
    y = torch.nn.functional.linear(batch["x"], p["w"], p["b"])
    return {"y": torch.tanh(y), "norm": y.pow(2).sum()}


class Moments(NamedTuple):
    mean: torch.Tensor
    var: torch.Tensor


def _moments(xs):
    x = torch.cat([xs[0], xs[1]])
    m = x.mean(0)
    return Moments(m, ((x - m) ** 2).mean(0))


def _moments_ref(xs):
    x = torch.cat(xs)
    v, m = torch.var_mean(x, dim=0, unbiased=False)
    return Moments(m, v)


def _nll(logits, target):
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -logp.gather(1, target[:, None]).mean()


def _nll_ref(logits, target):
    return torch.nn.functional.cross_entropy(logits, target)


def _args_plain():
    return (torch.linspace(-3, 3, 7, dtype=torch.float64), 2.0)


def _args_dict():
    k = fdl.random.split(fdl.random.key(1), 3)
    p = {"w": fdl.random.normal(k[0], (3, 4), dtype=torch.float64)}
    p["b"] = fdl.random.normal(k[1], (3,), dtype=torch.float64)
    return (p, {"x": fdl.random.normal(k[2], (5, 4), dtype=torch.float64)})


def _args_list():
    k = fdl.random.split(fdl.random.key(2))
    return (
        [
            fdl.random.normal(k[0], (4, 3), dtype=torch.float64),
            fdl.random.normal(k[1], (2, 3), dtype=torch.float64),
        ],
    )


def _args_int_target():
    z = fdl.random.normal(fdl.random.key(3), (6, 4), dtype=torch.float64)
    return (z, torch.tensor([0, 3, 1, 1, 2, 0]))


# (name, fn, reference, args factory, path of one differentiated input)
PARITY = [
    ("tensor", _softplus, torch.nn.functional.softplus, _args_plain, "args[0]"),
    ("dict", _linear_tree, _linear_tree_ref, _args_dict, "args[0].w"),
    ("namedtuple-out list-in", _moments, _moments_ref, _args_list, "args[0].1"),
    ("int target", _nll, _nll_ref, _args_int_target, "args[0]"),
]
PARITY_IDS = [c[0] for c in PARITY]


def _shift_values(fn):
    """``fn`` with its first floating output leaf moved by 1e-3 at one element."""

    def shifted(*args):
        out = fn(*args)
        lvs, treedef = fdl.tree.flatten(out)
        y = lvs[0]
        lvs[0] = y + torch.nn.functional.pad(
            torch.full((1,), 1e-3, dtype=y.dtype), (0, y.numel() - 1)
        ).reshape(y.shape)
        return fdl.tree.unflatten(treedef, lvs)

    return shifted


def _scale_grads(fn, factor=1.5):
    """``fn`` with the same values but every gradient multiplied by ``factor``."""

    def scaled(*args):
        out = fn(*args)
        return fdl.tree.map(lambda y: y.detach() + factor * (y - y.detach()), out)

    return scaled


# ---------------------------------------------------------------------------
# Registry of optimizers for assert_optimizer_parity (a local SGD, no fdl.optim needed)
# ---------------------------------------------------------------------------


class _GT(NamedTuple):
    init: object
    update: object


class _TraceState(NamedTuple):
    count: torch.Tensor
    trace: dict


def _sgd(lr=0.1, momentum=0.0, schedule=None, in_place=False):
    """SGD with (torch-style) momentum: buf = momentum * buf + g; update = -lr * buf."""

    def init(params):
        return _TraceState(torch.zeros((), dtype=torch.int64), fdl.tree.zeros_like(params))

    def update(grads, state, params=None):
        if in_place:
            for b, g in zip(fdl.tree.leaves(state.trace), fdl.tree.leaves(grads), strict=True):
                b.mul_(momentum).add_(g)
            trace = state.trace
        else:
            trace = fdl.tree.map(lambda b, g: momentum * b + g, state.trace, grads)
        rate = lr if schedule is None else schedule(state.count)
        return fdl.tree.scale(trace, -rate), _TraceState(state.count + 1, trace)

    return _GT(init, update)


# (name, fdl optimizer, torch kwargs, params factory) — params None: the default MLP
OPTIMIZERS = [
    ("sgd default", _sgd(0.1), {"lr": 0.1}, None),
    ("momentum default", _sgd(0.05, 0.9), {"lr": 0.05, "momentum": 0.9}, None),
    ("momentum nested", _sgd(0.05, 0.9), {"lr": 0.05, "momentum": 0.9}, _args_dict),
    ("sgd list float32", _sgd(0.1), {"lr": 0.1}, lambda: [torch.ones(3), [torch.zeros(2, 2)]]),
]
OPT_IDS = [o[0] for o in OPTIMIZERS]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny float64 problems run many times faster on one thread on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------
# assert_trees_close
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,make,path,index", TREES, ids=[t[0] for t in TREES])
def test_trees_close_passes_on_equal(name, make, path, index):
    assert_trees_close(make(), make())


@pytest.mark.parametrize("name,make,path,index", TREES, ids=[t[0] for t in TREES])
def test_trees_close_reports_perturbed_leaf(name, make, path, index):
    expected = make()
    actual = _perturb(expected, path, index)
    with pytest.raises(AssertionError) as err:
        assert_trees_close(actual, expected)
    msg = str(err.value)
    n_leaves = len(fdl.tree.leaves(expected))
    assert f"1 of {n_leaves} leaves differ" in msg
    assert f"'{path}': 1 of " in msg
    assert "max abs error 0.5" in msg
    leaf = dict(zip(fdl.tree.paths(expected), fdl.tree.leaves(expected), strict=True)).get(
        path if path != "<root>" else ""
    )
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(index), leaf.shape))
    assert f"at index {idx}" in msg
    assert "max rel error" in msg


def test_trees_close_lists_every_failing_leaf():
    expected = _dict()
    actual = _perturb(_perturb(expected, "fc.weight", 0), "scale", 0, delta=-1.0)
    msg = _failure(actual, expected)
    assert "2 of 3 leaves differ" in msg
    assert "'fc.weight'" in msg and "'scale'" in msg and "'fc.bias'" not in msg
    assert "max abs error 1 at index ()" in msg
    assert "(actual 1, expected 2)" in msg
    assert "max rel error 0.5" in msg
    msg = _failure(
        torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.5 + 1e-9], dtype=torch.float64)
    )
    assert "(actual 0.5, expected 0.500000001)" in msg  # digits enough to tell them apart


def _failure(actual, expected, **kw) -> str:
    with pytest.raises(AssertionError) as err:
        assert_trees_close(actual, expected, **kw)
    return str(err.value)


def test_trees_close_counts_mismatched_elements():
    expected = torch.zeros(10)
    actual = expected.clone()
    actual[[1, 4, 7]] = torch.tensor([0.1, -0.3, 0.2])
    msg = _failure(actual, expected)
    assert "3 of 10 elements not close" in msg
    assert "max abs error 0.3 at index (4,)" in msg
    assert "first mismatch at index (1,)" in msg


def test_trees_close_structure_first():
    msg = _failure({"a": torch.ones(1), "b": torch.ones(1)}, {"a": torch.ones(2)})
    assert "tree structures differ at '<root>'" in msg
    msg = _failure(_namedtuple(), Pair({"v": torch.ones(1)}, torch.tensor(3)))
    assert "tree structures differ at 'mu'" in msg
    msg = _failure([torch.ones(1), [torch.ones(1)]], [torch.ones(1), [torch.ones(1)] * 2])
    assert "at '1': length 1 vs 2" in msg


def test_trees_close_shape_and_dtype():
    assert "shape (3,) vs expected (4,)" in _failure(torch.ones(3), torch.ones(4))
    msg = _failure({"w": torch.ones(3)}, {"w": torch.ones(3, dtype=torch.float64)})
    assert "'w': dtype torch.float32 vs expected torch.float64" in msg
    # without the dtype check: compared with the looser (float32) tolerances
    assert_trees_close(torch.ones(3), torch.ones(3, dtype=torch.float64) + 1e-7, check_dtype=False)


def test_trees_close_nan_and_inf():
    nan, inf = math.nan, math.inf
    assert_trees_close(torch.tensor([nan, 1.0, inf]), torch.tensor([nan, 1.0, inf]))
    msg = _failure(torch.tensor([nan, 1.0]), torch.tensor([0.0, 1.0]))
    assert "1 of 2 elements" in msg and "max abs error inf at index (0,)" in msg
    msg = _failure(torch.tensor([inf]), torch.tensor([-inf]))
    assert "(actual inf, expected -inf)" in msg
    _failure(torch.tensor([nan]), torch.tensor([nan]), equal_nan=False)


def test_trees_close_tolerances():
    e = torch.ones(4)
    assert_trees_close(e + 5e-6, e)  # within float32 rtol 1e-5
    assert "(rtol=1e-05, atol=1e-06)" in _failure(e + 5e-5, e)
    assert_trees_close(e + 5e-5, e, rtol=1e-4)
    assert "(rtol=0, atol=0.01)" in _failure(e + 0.02, e, rtol=0, atol=0.01)
    d = torch.ones(4, dtype=torch.float64)
    assert_trees_close(d + 1e-11, d)
    _failure(d + 1e-9, d)
    assert default_tolerances(torch.float64) == (1e-10, 1e-12)
    assert default_tolerances(torch.complex64) == default_tolerances(torch.float32)
    h = torch.ones(4, dtype=torch.bfloat16)
    assert_trees_close(h * 1.0078125, h)  # one bfloat16 ulp at 1


def test_trees_close_integers_exact():
    assert_trees_close(torch.tensor([1, 2]), torch.tensor([1, 2]))
    assert "not exactly equal" in _failure(torch.tensor([1, 2]), torch.tensor([1, 3]))


def test_trees_close_non_tensor_leaves():
    assert_trees_close({"lr": 0.1, "n": 3, "name": "a"}, {"lr": 0.1, "n": 3, "name": "a"})
    assert "'n': 3 vs expected 4" in _failure({"n": 3}, {"n": 4})
    assert "'lr': 1 of 1 elements" in _failure({"lr": 0.1}, {"lr": 0.2})
    assert "tensor(2,) vs expected float" in _failure({"x": torch.ones(2)}, {"x": 1.0})


def test_trees_close_msg_and_bad_args():
    assert _failure(torch.ones(1), torch.zeros(1), msg="step 3").startswith("step 3: ")
    with pytest.raises(ValueError, match="rtol must be a non-negative"):
        assert_trees_close(torch.ones(1), torch.ones(1), rtol=-1.0)
    with pytest.raises(TypeError, match="atol must be"):
        assert_trees_close(torch.ones(1), torch.ones(1), atol="0.1")


def test_trees_close_gradients_and_complex():
    x = torch.ones(3, requires_grad=True)
    assert_trees_close(x * 2, torch.full((3,), 2.0))
    c = torch.tensor([1 + 1j, 2 - 1j])
    assert_trees_close(c, c.clone())
    assert "max abs error 1 at index (1,)" in _failure(c, c + torch.tensor([0, 1j]))


# ---------------------------------------------------------------------------
# assert_pure
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,make,path,index", TREES, ids=[t[0] for t in TREES])
def test_pure_passes_and_returns(name, make, path, index):
    tree = make()
    out = assert_pure(lambda t, s=1.0: fdl.tree.scale(t, s), tree, s=2.0)
    assert_trees_close(out, fdl.tree.scale(make(), 2.0))
    assert_trees_close(tree, make())


@pytest.mark.parametrize("name,make,path,index", TREES, ids=[t[0] for t in TREES])
def test_pure_names_mutated_leaf(name, make, path, index):
    def bad(t):
        leaf = fdl.tree.to_flat_dict(t)[path if path != "<root>" else ""]
        leaf.view(-1)[index] += 1
        return t

    with pytest.raises(AssertionError) as err:
        assert_pure(bad, make())
    msg = str(err.value)
    where = "args[0]" + ("" if path == "<root>" else "." + path)
    assert re.search(rf"{re.escape(where)}: written in place \(version \d+ -> \d+\)", msg), msg
    assert "values changed (max abs change 1)" in msg
    assert "bad modified 1 input tensor in place" in msg


def test_pure_catches_kwargs_metadata_and_silent_writes():
    def f(x, *, state):
        state["m"].add_(0.0)  # same values, still a write
        x.requires_grad_(True)
        return x

    with pytest.raises(AssertionError) as err:
        assert_pure(f, torch.ones(2), state={"m": torch.zeros(2)})
    msg = str(err.value)
    assert "2 input tensors" in msg
    assert "state.m: written in place" in msg and "values changed" not in msg
    assert "args[0]: requires_grad changed False -> True" in msg

    with pytest.raises(AssertionError, match=r"args\[0\]: .*shape changed \(4,\) -> \(2,\)"):
        assert_pure(lambda x: x.resize_(2), torch.ones(4))


def test_pure_ignores_non_tensors_and_nan():
    x = {"w": torch.tensor([math.nan, 1.0]), "n": 3, "f": "relu"}
    assert assert_pure(lambda t: t["n"] + 1, x) == 4


# ---------------------------------------------------------------------------
# assert_parity and check_grads
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,fn,ref,make,path", PARITY, ids=PARITY_IDS)
def test_parity_passes_on_equal(name, fn, ref, make, path):
    args = make()
    fdl.testing.assert_parity(fn, ref, *args)
    fdl.testing.assert_parity(fn, ref, *args, grads=False)
    assert_trees_close(args, make())  # inputs untouched


@pytest.mark.parametrize("name,fn,ref,make,path", PARITY, ids=PARITY_IDS)
def test_parity_reports_values(name, fn, ref, make, path):
    with pytest.raises(AssertionError) as err:
        fdl.testing.assert_parity(_shift_values(fn), ref, *make())
    msg = str(err.value)
    assert msg.startswith("shifted and ")
    assert "values: 1 of " in msg and "max abs error 0.001 at index" in msg
    assert "gradients" not in msg  # a constant shift leaves gradients alone


@pytest.mark.parametrize("name,fn,ref,make,path", PARITY, ids=PARITY_IDS)
def test_parity_reports_gradients(name, fn, ref, make, path):
    with pytest.raises(AssertionError) as err:
        fdl.testing.assert_parity(_scale_grads(fn), ref, *make())
    msg = str(err.value)
    assert "values" not in msg
    assert "gradients of sum(output * cotangent) w.r.t. the floating inputs" in msg
    assert f"'{path}': " in msg and "max rel error 0.5" in msg
    fdl.testing.assert_parity(_scale_grads(fn), ref, *make(), grads=False)


def test_parity_structure_shape_and_unused_inputs():
    x = torch.ones(3, dtype=torch.float64)
    with pytest.raises(AssertionError, match="values: tree structures differ at '<root>'"):
        fdl.testing.assert_parity(lambda x: (x, x), lambda x: [x, x], x)
    with pytest.raises(AssertionError, match=r"shape \(3,\) vs expected \(1, 3\)"):
        fdl.testing.assert_parity(lambda x: x, lambda x: x[None], x)
    # dropping the dependence on an input shows as a zero gradient
    with pytest.raises(AssertionError, match=r"'args\[0\]': 3 of 3 elements.*actual 0"):
        fdl.testing.assert_parity(lambda x: x.detach() * 2, lambda x: x * 2, x)
    # tolerances for values and gradients separately
    fdl.testing.assert_parity(_scale_grads(torch.sin, 1.001), torch.sin, x, grad_rtol=0.01)
    with pytest.raises(AssertionError, match="values"):
        fdl.testing.assert_parity(lambda x: x + 1e-6, torch.clone, x, grad_rtol=1.0)


def test_parity_integer_outputs_and_partial_names():
    import functools

    z = fdl.random.normal(fdl.random.key(4), (5, 3), dtype=torch.float64)
    fdl.testing.assert_parity(lambda z: z.argmax(1), lambda z: torch.argmax(z, dim=1), z)
    with pytest.raises(AssertionError, match=r"^mean and sum differ\nvalues"):
        fdl.testing.assert_parity(
            functools.partial(torch.mean, dim=0), functools.partial(torch.sum, dim=0), z
        )


def test_parity_does_not_share_inputs():
    def mutating(x):
        return x.mul_(2)

    # fn writes to its own copy: the reference still sees the original input
    x = torch.ones(2)
    with pytest.raises(AssertionError, match="values"):
        fdl.testing.assert_parity(mutating, lambda x: x.clone(), x, grads=False)
    assert_trees_close(x, torch.ones(2))


@pytest.mark.parametrize("name,fn,ref,make,path", PARITY, ids=PARITY_IDS)
@pytest.mark.parametrize("order", [1, 2])
def test_check_grads_passes(name, fn, ref, make, path, order):
    fdl.testing.check_grads(fn, make(), order=order)


@pytest.mark.parametrize("name,fn,ref,make,path", PARITY, ids=PARITY_IDS)
def test_check_grads_reports_wrong_gradient(name, fn, ref, make, path):
    with pytest.raises(AssertionError) as err:
        fdl.testing.check_grads(_scale_grads(fn), make())
    msg = str(err.value)
    assert msg.startswith("check_grads(scaled): gradient (reverse mode, torch.func.grad) vs")
    assert f"'{path}': " in msg and "max rel error 0.5 at" in msg
    assert "(eps=1e-06, float64)" in msg


def _cube_wrong_second(x):
    """x**3 with a right first derivative and a zero second derivative."""
    d = x.detach()
    return d**3 + 3 * d**2 * (x - d)


def test_check_grads_second_order_only():
    x = {"a": torch.tensor([0.5, -1.0, 2.0])}
    f = lambda t: _cube_wrong_second(t["a"])  # noqa: E731
    fdl.testing.check_grads(f, (x,), order=1)
    with pytest.raises(AssertionError) as err:
        fdl.testing.check_grads(f, (x,), order=2)
    msg = str(err.value)
    assert "order-2 derivative (gradient of the gradient)" in msg
    assert "'args[0].a': 3 of 3 elements" in msg


def test_check_grads_directional_and_forward_modes():
    big = torch.linspace(-1, 1, 300, dtype=torch.float64).reshape(20, 15)
    fdl.testing.check_grads(torch.sin, (big,), max_elements=100)
    fdl.testing.check_grads(torch.sin, (big,), max_elements=100, modes=("rev", "fwd"))
    with pytest.raises(AssertionError, match="along 4 random unit directions per input"):
        fdl.testing.check_grads(_scale_grads(torch.sin), (big,), max_elements=100)
    with pytest.raises(AssertionError, match=r"forward mode, torch.func.jvp\) along 2 random"):
        fdl.testing.check_grads(
            _scale_grads(torch.sin), (big[:2],), modes=("fwd",), num_directions=2
        )


def test_check_grads_float32_inputs_checked_in_float64():
    seen = []

    def f(x):
        seen.append(x.dtype)
        return x.exp()

    fdl.testing.check_grads(f, (torch.ones(2, dtype=torch.float32),))
    assert set(seen) == {torch.float64}


def test_check_grads_bad_arguments():
    x = torch.ones(2, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"args must be a tuple.*wrap a single argument as \(x,\)"):
        fdl.testing.check_grads(torch.sin, x)
    with pytest.raises(ValueError, match="order must be an integer >= 1"):
        fdl.testing.check_grads(torch.sin, (x,), order=0)
    with pytest.raises(ValueError, match="modes must be"):
        fdl.testing.check_grads(torch.sin, (x,), modes=("jvp",))
    with pytest.raises(TypeError, match="no floating-point tensor"):
        fdl.testing.check_grads(torch.sin, (torch.ones(2, dtype=torch.int64),))


# ---------------------------------------------------------------------------
# assert_optimizer_parity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,opt,kw,make", OPTIMIZERS, ids=OPT_IDS)
def test_optimizer_parity_passes(name, opt, kw, make):
    params = None if make is None else make()
    fdl.testing.assert_optimizer_parity(opt, torch.optim.SGD, kw, steps=30, params=params)
    if params is not None:
        assert_trees_close(params, make())  # the caller's params are not trained in place


@pytest.mark.parametrize("name,opt,kw,make", OPTIMIZERS, ids=OPT_IDS)
def test_optimizer_parity_reports_first_divergence(name, opt, kw, make):
    params = None if make is None else make()
    wrong = {**kw, "momentum": 0.5, "dampening": 0.5}  # same first step, different second
    with pytest.raises(AssertionError) as err:
        fdl.testing.assert_optimizer_parity(opt, torch.optim.SGD, wrong, steps=30, params=params)
    msg = str(err.value)
    assert "fdl optimizer and SGD diverge at step 2 of 30 (equal up to step 1)" in msg
    first = fdl.tree.paths(params if params is not None else fdl.testing.optimizer_problem()[0])[0]
    assert f"first diverging parameter '{first}'" in msg
    assert "step 2: " in msg and f"  '{first}': " in msg and "max abs error" in msg


def test_optimizer_parity_scheduler_and_custom_loss():
    # torch: StepLR halves lr every 3 steps; fdl: the same schedule read from the step count
    def sched(count):
        return 0.1 * 0.5 ** torch.div(count, 3, rounding_mode="floor").to(torch.float64)

    params = {"w": torch.linspace(-1, 1, 6, dtype=torch.float64)}
    loss = lambda p: (p["w"] ** 4).sum() + p["w"].sum()  # noqa: E731
    fdl.testing.assert_optimizer_parity(
        _sgd(schedule=sched),
        torch.optim.SGD,
        {"lr": 0.1},
        steps=10,
        params=params,
        loss=loss,
        torch_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    )
    with pytest.raises(AssertionError, match="diverge at step 4 of 10"):
        fdl.testing.assert_optimizer_parity(
            _sgd(0.1),
            torch.optim.SGD,
            {"lr": 0.1},
            steps=10,
            params=params,
            loss=loss,
            torch_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
        )


def test_optimizer_parity_purity_and_bad_arguments():
    with pytest.raises(
        AssertionError,
        match=r"update modified 4 input tensors in place:\n  args\[1\]\.trace\.0\.bias: written",
    ):
        fdl.testing.assert_optimizer_parity(
            _sgd(0.1, 0.9, in_place=True), torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, steps=2
        )
    fdl.testing.assert_optimizer_parity(
        _sgd(0.1, 0.9, in_place=True),
        torch.optim.SGD,
        {"lr": 0.1, "momentum": 0.9},
        steps=3,
        check_pure=False,
    )
    with pytest.raises(TypeError, match="GradientTransformation with init and update"):
        fdl.testing.assert_optimizer_parity(object(), torch.optim.SGD, {"lr": 0.1})
    with pytest.raises(TypeError, match="pass params= too"):
        fdl.testing.assert_optimizer_parity(_sgd(), torch.optim.SGD, {"lr": 0.1}, loss=len)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        fdl.testing.assert_optimizer_parity(_sgd(), torch.optim.SGD, {"lr": 0.1}, steps=0)


def test_optimizer_problem():
    p1, loss1 = fdl.testing.optimizer_problem()
    p2, _ = fdl.testing.optimizer_problem()
    assert_trees_close(p1, p2)  # fixed
    assert loss1(p1).shape == () and float(loss1(p1)) > 0
    p, loss = fdl.testing.optimizer_problem({"a": torch.zeros(3)})
    g = torch.func.grad(loss)(p)
    assert g["a"].abs().min() > 0  # every element moves
    with pytest.raises(TypeError, match="pytree of floating tensors"):
        fdl.testing.optimizer_problem({"n": torch.ones(2, dtype=torch.int64)})


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------

_few = settings(max_examples=25, deadline=None)


@_few
@given(fst.shapes(min_rank=1, max_rank=3, min_dim=2, max_dim=5))
def test_strategy_shapes(shape):
    assert 1 <= len(shape) <= 3 and all(2 <= d <= 5 for d in shape)


@_few
@given(st.data())
def test_strategy_tensors(data):
    dtype = data.draw(fst.dtypes(half=True, integer=True, boolean=True))
    x = data.draw(fst.tensors(fst.shapes(max_rank=3, max_dim=4), dtype=dtype))
    assert x.dtype == dtype and x.ndim <= 3
    if dtype.is_floating_point:
        assert bool(torch.isfinite(x).all())
    y = data.draw(fst.tensors((3, 2), dtype=torch.float64, min_value=1e-6, max_value=1e6))
    assert y.shape == (3, 2) and bool(((y >= 1e-6) & (y <= 1e6)).all())


@settings(max_examples=60, deadline=None)
@given(fst.tensors((8,), dtype=torch.float32, allow_nan=True, allow_inf=True))
def test_strategy_tensors_special_values(x):
    assert x.dtype == torch.float32  # NaN and inf may appear; the values stay float32


def test_strategy_special_values_turn_up():
    seen = {"nan": False, "inf": False, "huge": False, "tiny": False}

    @settings(max_examples=100, deadline=None, derandomize=True, database=None)
    @given(fst.tensors((4,), dtype=torch.float32, allow_nan=True, allow_inf=True))
    def look(x):
        seen["nan"] |= bool(x.isnan().any())
        seen["inf"] |= bool(x.isinf().any())
        finite = x[torch.isfinite(x) & (x != 0)].abs()
        seen["huge"] |= bool((finite > 1e30).any())
        seen["tiny"] |= bool((finite < 1e-30).any())

    look()
    assert all(seen.values()), seen


@_few
@given(fst.logits((4, 3), bound=100.0), fst.probabilities((4, 3), dtype=torch.float64))
def test_strategy_logits_and_probabilities(z, p):
    assert z.shape == (4, 3) and bool((z.abs() <= 100).all())
    assert bool((p > 0).all())
    assert_trees_close(p.sum(-1), torch.ones(4, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@_few
@given(fst.probabilities((5,), dim=None, min_value=1e-7, max_value=1 - 1e-7))
def test_strategy_elementwise_probabilities(p):
    assert bool(((p >= 1e-7) & (p <= 1 - 1e-7)).all())


@_few
@given(fst.classification_inputs(max_extra_dims=2, ignore_index=-100), fst.keys())
def test_strategy_classification_inputs_and_keys(inputs, key):
    z, t = inputs
    assert t.dtype == torch.int64 and z.shape[0] == t.shape[0] and z.shape[2:] == t.shape[1:]
    assert bool((((t >= 0) & (t < z.shape[1])) | (t == -100)).all())
    assert key.shape == (2,) and key.dtype == torch.int64


def test_strategy_bad_arguments():
    with pytest.raises(ValueError, match="min_rank <= max_rank"):
        fst.shapes(min_rank=3, max_rank=1)
    with pytest.raises(ValueError, match="every kind is switched off"):
        fst.dtypes(floating=False)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        fst.class_targets(0)
    with pytest.raises(ValueError, match="min_value <= max_value <= 1"):
        fst.probabilities(dim=None, max_value=2.0)


def test_import_does_not_need_hypothesis():
    """Only fdl.testing.strategies imports hypothesis, and fdl.testing loads it lazily."""
    import ast
    import pathlib

    package = pathlib.Path(fdl.testing.__file__).parent
    for path in package.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
                imported |= {f"{node.module}.{a.name}" for a in node.names}
        assert ("hypothesis" in imported) == (path.name == "strategies.py"), path.name
        if path.name != "strategies.py":
            assert "fdl.testing.strategies" not in imported, path.name


# ---------------------------------------------------------------------------
# docs/testing.md: its snippets run, and the failures it describes happen
# ---------------------------------------------------------------------------

_DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "testing.md"


@pytest.fixture(scope="module")
def doc_namespace():
    blocks = re.findall(r"```python\n(.*?)```", _DOC.read_text(), re.S)
    assert len(blocks) >= 4
    ns: dict = {}
    for block in blocks:
        exec(compile(block, str(_DOC), "exec"), ns)  # noqa: S102 - the doc's own code
    return ns


def test_doc_snippets_run(doc_namespace):
    doc_namespace["test_focal_loss_extreme_logits"]()


def test_doc_softplus_slip_is_caught(doc_namespace):
    def softplus_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
        p = torch.sigmoid(logits)
        softplus = torch.nn.functional.softplus
        bce = targets * softplus(-logits) + (1 - targets) * softplus(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        return (alpha_t * (1 - p_t) ** gamma * bce).mean()

    z = torch.full((4, 3), 21.0, dtype=torch.float64)
    t = torch.zeros(4, 3, dtype=torch.float64)
    ref = doc_namespace["sigmoid_focal_loss"]
    fdl.testing.assert_parity(doc_namespace["focal_loss"], ref, z, t)
    with pytest.raises(AssertionError, match=r"(?s)gradients.*'args\[0\]'.*max rel error 7\.58"):
        fdl.testing.assert_parity(softplus_focal_loss, ref, z, t)


def test_doc_plain_momentum_is_caught(doc_namespace):
    state_cls = doc_namespace["MomentumState"]

    def plain(lr, momentum, weight_decay):
        def update(grads, state, params):
            g = fdl.tree.map(lambda g, p: g + weight_decay * p, grads, params)
            buf = fdl.tree.map(lambda b, g: momentum * b + g, state.buf, g)
            return fdl.tree.scale(buf, -lr), state_cls(buf)

        return fdl.optim.GradientTransformation(lambda p: state_cls(fdl.tree.zeros_like(p)), update)

    kw = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}
    with pytest.raises(AssertionError, match="diverge at step 1 of 100 from the first step"):
        fdl.testing.assert_optimizer_parity(plain(0.05, 0.9, 1e-3), torch.optim.SGD, kw)
