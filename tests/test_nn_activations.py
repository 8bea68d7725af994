"""Activation layers and functions against torch.nn / torch.nn.functional.

One registry at the top: (name, fdl layer, torch layer, fdl function, torch function,
constructor/function options). Every property is parametrised over every entry.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fdl
import fdl.nn.functional as FF
from fdl.testing import assert_trees_close


@dataclass(frozen=True)
class ActCase:
    name: str
    fdl_layer: type
    torch_layer: type
    fdl_fn: Callable[..., torch.Tensor]
    torch_fn: Callable[..., torch.Tensor]
    options: tuple[dict, ...] = ({},)


ACTIVATIONS: list[ActCase] = [
    ActCase("ReLU", fdl.nn.ReLU, torch.nn.ReLU, FF.relu, F.relu),
    ActCase(
        "LeakyReLU",
        fdl.nn.LeakyReLU,
        torch.nn.LeakyReLU,
        FF.leaky_relu,
        F.leaky_relu,
        ({}, {"negative_slope": 0.2}, {"negative_slope": -0.5}),
    ),
    ActCase("ELU", fdl.nn.ELU, torch.nn.ELU, FF.elu, F.elu, ({}, {"alpha": 0.5}, {"alpha": 2.0})),
    ActCase("GELU", fdl.nn.GELU, torch.nn.GELU, FF.gelu, F.gelu, ({}, {"approximate": "tanh"})),
    ActCase("SiLU", fdl.nn.SiLU, torch.nn.SiLU, FF.silu, F.silu),
    ActCase("Sigmoid", fdl.nn.Sigmoid, torch.nn.Sigmoid, FF.sigmoid, torch.sigmoid),
    ActCase("Tanh", fdl.nn.Tanh, torch.nn.Tanh, FF.tanh, torch.tanh),
    ActCase(
        "Softmax",
        fdl.nn.Softmax,
        torch.nn.Softmax,
        FF.softmax,
        F.softmax,
        ({"dim": 1}, {"dim": -1}, {"dim": 0}, {}),
    ),
    ActCase(
        "LogSoftmax",
        fdl.nn.LogSoftmax,
        torch.nn.LogSoftmax,
        FF.log_softmax,
        F.log_softmax,
        ({"dim": 1}, {"dim": -1}, {"dim": 0}, {}),
    ),
]

CASES = [(c, o) for c in ACTIVATIONS for o in c.options]
CASE_IDS = [f"{c.name}-{i}" for c in ACTIVATIONS for i, _ in enumerate(c.options)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _close(actual: Any, expected: Any, dtype: torch.dtype, msg: str = "") -> None:
    tol = TOL[dtype]
    assert_trees_close(actual, expected, rtol=tol, atol=tol, msg=msg)


def _input(seed: int, shape: tuple[int, ...], dtype: torch.dtype, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * scale
    x.view(-1)[0] = 0.0  # exercise the kinks (relu, leaky_relu, elu at 0)
    return x


def _value_and_grad(fn: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's implicit-dim softmax warning
        y = fn(x)
    cot = torch.linspace(0.5, 1.5, y.numel(), dtype=y.dtype).reshape(y.shape)
    (g,) = torch.autograd.grad((y * cot).sum(), x)
    return y.detach(), g


shapes = st.lists(st.integers(1, 5), min_size=2, max_size=4).map(tuple)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("case", "opt"), CASES, ids=CASE_IDS)
@settings(max_examples=8, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1.0, 5.0, 100.0]))
def test_layer_and_function_parity(case, opt, dtype, shape, seed, scale):
    x = _input(seed, shape, dtype, scale)
    layer, module = case.fdl_layer(**opt), case.torch_layer(**opt)
    params = layer.init(fdl.random.key(0))
    want, want_g = _value_and_grad(module, x)
    for what, fn in [
        ("layer", lambda x: layer.apply(params, x)),
        ("function", lambda x: case.fdl_fn(x, **opt)),
    ]:
        got, got_g = _value_and_grad(fn, x)
        assert got.dtype == want.dtype
        _close(got, want, dtype, f"{case.name} {opt} {what} value")
        _close(got_g, want_g, dtype, f"{case.name} {opt} {what} grad")
        assert torch.isfinite(got).all() and torch.isfinite(got_g).all()


@pytest.mark.parametrize("case", ACTIVATIONS, ids=lambda c: c.name)
def test_init_is_empty_and_params_checked(case):
    layer = case.fdl_layer(**case.options[0])
    assert layer.init(fdl.random.key(0)) == {}
    assert layer.param_shapes() == {}
    with pytest.raises(ValueError, match="weight"):
        layer.apply({"weight": torch.ones(2)}, torch.zeros(2, 2))


@pytest.mark.parametrize("case", ACTIVATIONS, ids=lambda c: c.name)
def test_unknown_constructor_argument(case):
    with pytest.raises(TypeError):
        case.fdl_layer(not_an_argument=1)


@pytest.mark.parametrize(("case", "opt"), CASES, ids=CASE_IDS)
def test_pure_input_unchanged(case, opt):
    x = _input(0, (3, 4), torch.float64, 2.0)
    before = x.clone()
    case.fdl_layer(**opt).apply({}, x)
    case.fdl_fn(x, **opt)
    assert torch.equal(x, before)


def _per_example(case, opt) -> bool:
    """Entries that normalise over the batch axis (dim 0, or softmax's implicit dim) couple
    examples, so vmap over examples is not expected to give the batched result."""
    return not (opt.get("dim", None) == 0 or (case.name.endswith("Softmax") and "dim" not in opt))


VMAP_CASES = [(c, o) for c, o in CASES if _per_example(c, o)]
VMAP_IDS = [i for (c, o), i in zip(CASES, CASE_IDS, strict=True) if _per_example(c, o)]


@pytest.mark.parametrize(("case", "opt"), VMAP_CASES, ids=VMAP_IDS)
def test_vmap_over_examples_matches_batch(case, opt):
    layer = case.fdl_layer(**opt)
    x = _input(1, (4, 3, 2), torch.float64, 2.0)
    per_example = torch.func.vmap(lambda xi: layer.apply({}, xi[None])[0])(x)
    _close(per_example, layer.apply({}, x), torch.float64)


@pytest.mark.parametrize("case", ACTIVATIONS, ids=lambda c: c.name)
def test_traces_under_compile_fullgraph(case):
    torch._dynamo.reset()
    layer = case.fdl_layer(**case.options[0])
    x = _input(2, (3, 4), torch.float32, 2.0)

    def value_and_grad(x):
        return torch.func.grad_and_value(lambda xx: layer.apply({}, xx).sum())(x)

    got = torch.compile(value_and_grad, backend="eager", fullgraph=True)(x)
    _close(got, value_and_grad(x), torch.float32)


@pytest.mark.parametrize("fn", [FF.relu, FF.leaky_relu, FF.elu, FF.silu], ids=lambda f: f.__name__)
def test_inplace_is_refused(fn):
    with pytest.raises(ValueError, match="inplace"):
        fn(torch.zeros(2), inplace=True)


def test_gelu_bad_approximate():
    with pytest.raises(ValueError, match="approximate"):
        fdl.nn.GELU(approximate="fast")
    with pytest.raises(ValueError, match="approximate"):
        FF.gelu(torch.zeros(2), approximate="fast")


def test_softmax_dim_out_of_range():
    with pytest.raises(ValueError, match="dim 3"):
        FF.softmax(torch.zeros(2, 2), dim=3)


def test_non_tensor_input():
    with pytest.raises(TypeError, match="ReLU"):
        fdl.nn.ReLU().apply({}, [1.0, 2.0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("dim", "keepdim"), [(0, False), (1, True), ((0, 2), False), (-1, False)])
def test_logsumexp_parity(dtype, dim, keepdim):
    x = _input(3, (3, 4, 5), dtype, 100.0)
    x[0, 0, :] = -float("inf")  # a row with no finite entry
    x[1, 1, 1] = -float("inf")
    got = FF.logsumexp(x, dim, keepdim)
    want = torch.logsumexp(x, dim, keepdim)
    _close(got, want, dtype)
    y = _input(4, (3, 4, 5), dtype, 100.0)
    _close(
        _value_and_grad(lambda t: FF.logsumexp(t, dim, keepdim), y),
        _value_and_grad(lambda t: torch.logsumexp(t, dim, keepdim), y),
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_logsigmoid_parity(dtype):
    x = _input(5, (50,), dtype, 100.0)
    x[1], x[2] = 1000.0, -1000.0
    _close(_value_and_grad(FF.logsigmoid, x), _value_and_grad(F.logsigmoid, x), dtype)


def test_log_softmax_extreme_logits_finite():
    x = torch.tensor([[100.0, -100.0, 0.0], [1e4, -1e4, 0.0]])
    y, g = _value_and_grad(lambda t: FF.log_softmax(t, dim=1), x)
    assert torch.isfinite(y).all() and torch.isfinite(g).all()
    _close(y, F.log_softmax(x, dim=1), torch.float32)
