"""Normalisation layers against torch.nn: values, gradients, running statistics, purity.

One registry at the top: (name, fdl layer, torch layer, a hypothesis draw of constructor
options and input shape). Every property is parametrised over every entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fdl
from fdl.testing import assert_trees_close

Draw = Callable[[st.DataObject], tuple[dict, tuple[int, ...]]]

# Every drawn input has at least this many values per normalised group. With fewer
# (2 or 3 values) the normalisation is so ill-conditioned that torch's own float32
# gradients are off by up to 1e-2 from the float64 ones, and any two float32
# implementations disagree by more than 1e-5. With 4 or more they agree to < 5e-6.
MIN_VALUES = 4


def _draw_layer_norm(data: st.DataObject) -> tuple[dict, tuple[int, ...]]:
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    shape = (*shape[:-1], shape[-1] + 3)
    k = data.draw(st.integers(1, len(shape)))
    kwargs = {
        "normalized_shape": shape[len(shape) - k :],
        "eps": data.draw(st.sampled_from([1e-5, 1e-2])),
        "elementwise_affine": data.draw(st.booleans()),
        "bias": data.draw(st.booleans()),
    }
    if kwargs["normalized_shape"] == shape[-1:] and data.draw(st.booleans()):
        kwargs["normalized_shape"] = shape[-1]  # the int form
    return kwargs, shape


def _draw_group_norm(data: st.DataObject) -> tuple[dict, tuple[int, ...]]:
    groups, per_group = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    n = data.draw(st.integers(1, 3))
    spatial = tuple(data.draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    if per_group * prod(spatial) < MIN_VALUES:
        spatial = (*spatial, MIN_VALUES)
    kwargs = {
        "num_groups": groups,
        "num_channels": groups * per_group,
        "eps": data.draw(st.sampled_from([1e-5, 1e-2])),
        "affine": data.draw(st.booleans()),
        "bias": data.draw(st.booleans()),
    }
    return kwargs, (n, groups * per_group, *spatial)


def _batch_norm_kwargs(data: st.DataObject, c: int) -> dict:
    return {
        "num_features": c,
        "eps": data.draw(st.sampled_from([1e-5, 1e-2])),
        "momentum": data.draw(st.sampled_from([0.1, 0.5, None])),
        "affine": data.draw(st.booleans()),
        "track_running_stats": data.draw(st.booleans()),
        "bias": data.draw(st.booleans()),
    }


def _draw_batch_norm_1d(data: st.DataObject) -> tuple[dict, tuple[int, ...]]:
    n, c = data.draw(st.integers(MIN_VALUES, 6)), data.draw(st.integers(1, 4))
    length = data.draw(st.sampled_from([(), (1,), (3,)]))
    return _batch_norm_kwargs(data, c), (n, c, *length)


def _draw_batch_norm_2d(data: st.DataObject) -> tuple[dict, tuple[int, ...]]:
    n, c = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    h, w = data.draw(st.integers(2, 4)), data.draw(st.integers(2, 3))  # n * h * w >= 4
    return _batch_norm_kwargs(data, c), (n, c, h, w)


@dataclass(frozen=True)
class NormCase:
    name: str
    fdl_layer: type
    torch_layer: type
    draw: Draw
    example: tuple[dict, tuple[int, ...]]  # fixed options and input shape for the quick checks


NORMS: list[NormCase] = [
    NormCase(
        "LayerNorm",
        fdl.nn.LayerNorm,
        torch.nn.LayerNorm,
        _draw_layer_norm,
        ({"normalized_shape": (3, 4)}, (2, 3, 4)),
    ),
    NormCase(
        "GroupNorm",
        fdl.nn.GroupNorm,
        torch.nn.GroupNorm,
        _draw_group_norm,
        ({"num_groups": 2, "num_channels": 4}, (3, 4, 5)),
    ),
    NormCase(
        "BatchNorm1d",
        fdl.nn.BatchNorm1d,
        torch.nn.BatchNorm1d,
        _draw_batch_norm_1d,
        ({"num_features": 3}, (4, 3, 2)),
    ),
    NormCase(
        "BatchNorm2d",
        fdl.nn.BatchNorm2d,
        torch.nn.BatchNorm2d,
        _draw_batch_norm_2d,
        ({"num_features": 3}, (4, 3, 2, 2)),
    ),
]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# the layers of (N, C, H, W) images, checked again on channels-last inputs
CHANNELS_LAST = [c for c in NORMS if c.name in ("GroupNorm", "BatchNorm2d")]


# --------------------------------------------------------------------------- helpers


def _close(actual: Any, expected: Any, dtype: torch.dtype, msg: str = "") -> None:
    tol = TOL[dtype]
    assert_trees_close(actual, expected, rtol=tol, atol=tol, msg=msg)


def _torch_module(case: NormCase, kwargs: dict, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    module = case.torch_layer(**kwargs, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
    return module


def _params_and_state(module: torch.nn.Module) -> tuple[dict, dict]:
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    state = {k: v.detach().clone() for k, v in module.named_buffers()}
    return params, state


def _apply(layer, params, x, state, train):
    """(y, new_state) for every layer; stateless layers pass ``state`` through."""
    if layer.stateful:
        return layer.apply(params, x, state=state, train=train)
    return layer.apply(params, x, train=train), state


def _fdl_value_and_grads(layer, params, x, state, train, cot):
    params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    x = x.clone().requires_grad_(True)
    y, new_state = _apply(layer, params, x, state, train)
    grads = torch.autograd.grad((y * cot).sum(), [x, *params.values()])
    return y.detach(), dict(zip(["input", *params], grads, strict=True)), new_state


def _torch_value_and_grads(module, x, train, cot):
    module.train(train)
    x = x.clone().requires_grad_(True)
    y = module(x)
    names = [k for k, _ in module.named_parameters()]
    grads = torch.autograd.grad((y * cot).sum(), [x, *module.parameters()])
    return y.detach(), dict(zip(["input", *names], grads, strict=True))


def _example(case: NormCase, dtype=torch.float64, seed=0):
    kwargs, shape = case.example
    module = _torch_module(case, kwargs, dtype, seed)
    layer = case.fdl_layer(**kwargs, dtype=dtype)
    params, state = _params_and_state(module)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    return layer, module, params, state, x


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", NORMS, ids=lambda c: c.name)
@settings(max_examples=8, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_parity_values_grads_and_running_stats(case, dtype, data, seed):
    kwargs, shape = case.draw(data)
    _check_parity(case, kwargs, shape, dtype, seed)


_BN_OPTIONS = [
    {"momentum": m, "affine": a, "track_running_stats": t}
    for m in (0.1, None)
    for a in (True, False)
    for t in (True, False)
]


@pytest.mark.parametrize("options", _BN_OPTIONS, ids=str)
@pytest.mark.parametrize("case", NORMS[2:], ids=lambda c: c.name)
def test_batch_norm_every_option_combination(case, options):
    """Every momentum/affine/tracking combination, whatever hypothesis happens to draw."""
    kwargs, shape = case.example
    _check_parity(case, {**kwargs, **options}, shape, torch.float64, seed=11)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CHANNELS_LAST, ids=lambda c: c.name)
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_parity_in_channels_last(case, dtype, seed):
    """Channels-last inputs: torch's values, gradients, statistics, and torch's output layout."""
    kwargs, shape = case.example
    _check_parity(case, kwargs, (4, *shape[1:2], 5, 3), dtype, seed, torch.channels_last)


def _check_parity(case, kwargs, shape, dtype, seed, memory_format=torch.contiguous_format):
    module = _torch_module(case, kwargs, dtype, seed)
    layer = case.fdl_layer(**kwargs, dtype=dtype)
    params, state = _params_and_state(module)
    assert set(params) == set(layer.init(fdl.random.key(0)))
    assert set(state) == set(layer.init_state())
    g = torch.Generator().manual_seed(seed)
    # three training steps then one evaluation step (stateless layers: train flag unused)
    for step, train in enumerate([True, True, True, False]):
        x = (torch.randn(shape, generator=g, dtype=dtype) * 3 + 1).contiguous(
            memory_format=memory_format
        )
        cot = (torch.rand(shape, generator=g, dtype=dtype) + 0.5).contiguous(
            memory_format=memory_format
        )
        what = f"{case.name} {kwargs} step {step} train={train}"
        got, got_g, state = _fdl_value_and_grads(layer, params, x, state, train, cot)
        want, want_g = _torch_value_and_grads(module, x, train, cot)
        _close(got, want, dtype, what + " value")
        assert got.stride() == want.stride(), what + " layout"
        assert got_g["input"].stride() == want_g["input"].stride(), what + " input-grad layout"
        _close(got_g, want_g, dtype, what + " grads")
        _close(state, dict(module.named_buffers()), dtype, what + " state")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", NORMS, ids=lambda c: c.name)
def test_init_matches_torch(case, dtype):
    kwargs, _ = case.example
    module = case.torch_layer(**kwargs, dtype=dtype)
    layer = case.fdl_layer(**kwargs, dtype=dtype)
    params, state = _params_and_state(module)
    got = layer.init(fdl.random.key(0))
    assert list(got) == list(params)
    assert_trees_close(got, params, rtol=0, atol=0)
    assert_trees_close(layer.init_state(), state, rtol=0, atol=0)
    shapes = layer.param_shapes()
    assert {k: tuple(v.shape) for k, v in shapes.items()} == {
        k: tuple(v.shape) for k, v in params.items()
    }


# --------------------------------------------------------------------------- purity and transforms


@pytest.mark.parametrize("case", NORMS, ids=lambda c: c.name)
@pytest.mark.parametrize("train", [True, False])
def test_pure_nothing_mutated(case, train):
    layer, _, params, state, x = _example(case)
    copies = [{k: v.clone() for k, v in params.items()}, {k: v.clone() for k, v in state.items()}]
    x_copy = x.clone()
    _apply(layer, params, x, state, train)
    assert_trees_close([params, state], copies, rtol=0, atol=0)
    assert torch.equal(x, x_copy)


@pytest.mark.parametrize("case", NORMS, ids=lambda c: c.name)
def test_vmap_over_examples_matches_batch(case):
    """Per-example statistics (LayerNorm, GroupNorm) or running statistics (BatchNorm, eval)."""
    layer, _, params, state, x = _example(case)
    if layer.stateful:
        g = torch.Generator().manual_seed(5)
        state = dict(state, running_mean=torch.randn(state["running_mean"].shape, generator=g))
        state = {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in state.items()}

    def one(xi):
        return _apply(layer, params, xi[None], state, False)[0][0]

    batched = _apply(layer, params, x, state, False)[0]
    _close(torch.func.vmap(one)(x), batched, torch.float64)


@pytest.mark.parametrize("case", NORMS, ids=lambda c: c.name)
def test_traces_under_compile_fullgraph(case):
    torch._dynamo.reset()
    layer, _, params, state, x = _example(case, dtype=torch.float32)

    def step(params, x, state):
        def loss(p):
            y, new_state = _apply(layer, p, x, state, True)
            return y.square().sum(), new_state

        return torch.func.grad_and_value(loss, has_aux=True)(params)

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    _close(compiled(params, x, state), step(params, x, state), torch.float32)
    # later steps (new state, new data) reuse the graph: the state holds only tensors
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(3):
            (grads, (loss, new_state)) = compiled(params, x + i, state)
            _close((grads, (loss, new_state)), step(params, x + i, state), torch.float32)
            state = new_state


def test_batch_norm_train_step_compiles_with_inductor():
    """One representative stateful layer through the default backend."""
    layer, module, params, state, x = _example(NORMS[3], dtype=torch.float32)
    step = torch.compile(lambda p, x, s: layer.apply(p, x, state=s, train=True), fullgraph=True)
    y, new_state = step(params, x, state)
    module.train()
    _close(y, module(x).detach(), torch.float32)
    _close(new_state, dict(module.named_buffers()), torch.float32)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", NORMS, ids=lambda c: c.name)
def test_wrong_param_shape_names_path_and_shapes(case):
    layer, _, params, state, x = _example(case)
    bad = dict(params, weight=torch.ones(7, dtype=torch.float64))
    expected = tuple(params["weight"].shape)
    with pytest.raises(
        ValueError, match=rf"'weight'.*\(7,\).*{__import__('re').escape(str(expected))}"
    ):
        _apply(layer, bad, x, state, False)


@pytest.mark.parametrize("case", NORMS, ids=lambda c: c.name)
def test_missing_and_extra_param(case):
    layer, _, params, state, x = _example(case)
    with pytest.raises(ValueError, match="bias"):
        _apply(layer, {"weight": params["weight"]}, x, state, False)
    with pytest.raises(ValueError, match="extra"):
        _apply(layer, dict(params, extra=torch.ones(1)), x, state, False)


@pytest.mark.parametrize("case", NORMS, ids=lambda c: c.name)
def test_wrong_input_shape_names_layer(case):
    layer, _, params, state, x = _example(case)
    bad = torch.ones(x.shape[0], x.shape[1] + 1, *x.shape[2:], dtype=x.dtype)
    if case.name == "LayerNorm":
        bad = torch.ones(*x.shape[:-1], x.shape[-1] + 1, dtype=x.dtype)
    with pytest.raises(ValueError, match=case.name + r".*expected input of shape"):
        _apply(layer, params, bad, state, False)


@pytest.mark.parametrize("case", NORMS, ids=lambda c: c.name)
def test_unknown_constructor_argument(case):
    kwargs, _ = case.example
    with pytest.raises(TypeError):
        case.fdl_layer(**kwargs, momentum_typo=0.1)


@pytest.mark.parametrize("cls", [fdl.nn.BatchNorm1d, fdl.nn.BatchNorm2d], ids=lambda c: c.__name__)
def test_batch_norm_bias_is_keyword_only(cls):
    with pytest.raises(TypeError):
        cls(3, 1e-5, 0.1, True, True, None, None, False)


def test_batch_norm_single_value_per_channel_in_training():
    bn = fdl.nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.apply(bn.init(fdl.random.key(0)), torch.ones(1, 3), state=bn.init_state(), train=True)


def test_batch_norm_bad_state():
    bn = fdl.nn.BatchNorm1d(3)
    params, state = bn.init(fdl.random.key(0)), bn.init_state()
    with pytest.raises(ValueError, match="running_var"):
        bn.apply(params, torch.ones(2, 3), state=dict(state, running_var=torch.ones(4)))
    with pytest.raises(ValueError, match="running_mean"):
        bn.apply(params, torch.ones(2, 3), state={"running_var": state["running_var"]})


def test_group_norm_indivisible_channels():
    with pytest.raises(ValueError, match="divisible"):
        fdl.nn.GroupNorm(3, 4)
