"""Parity, purity, vmap, compile and error tests for fdl.nn's parametric and shape layers.

Every layer is one registry entry: a hypothesis builder that draws constructor
options and input shapes and returns the fdl layer, the equivalent torch module
and the inputs, plus a small fixed example for the (slower) compile checks.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

import fdl
from fdl import tree as ft
from fdl.nn import functional as fF
from fdl.testing import assert_pure, assert_trees_close

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
SETTINGS = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Case:
    """One drawn configuration: fdl layer, torch module, inputs, and what to check."""

    layer: Any
    module: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    kwargs: dict[str, Any] | None = None  # extra apply/forward arguments
    vmap: bool = True  # the batch is dimension 0 of every input


def _rand(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype, generator=gen)


def _gen(draw: st.DrawFn) -> torch.Generator:
    return torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))


def _groups_channels(draw: st.DrawFn) -> tuple[int, int, int]:
    groups = draw(st.integers(1, 3))
    return groups, groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 3))


# -- builders: draw(...) -> Case ------------------------------------------------


def build_linear(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    n_in, n_out, bias = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.booleans())
    lead = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    x = _rand((*lead, n_in), dtype, _gen(draw))
    return Case(
        fdl.nn.Linear(n_in, n_out, bias=bias, dtype=dtype),
        torch.nn.Linear(n_in, n_out, bias=bias, dtype=dtype),
        (x,),
    )


def build_bilinear(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    n1, n2, n_out = (draw(st.integers(1, 4)) for _ in range(3))
    bias = draw(st.booleans())
    g, n = _gen(draw), draw(st.integers(1, 4))
    return Case(
        fdl.nn.Bilinear(n1, n2, n_out, bias, dtype=dtype),
        torch.nn.Bilinear(n1, n2, n_out, bias, dtype=dtype),
        (_rand((n, n1), dtype, g), _rand((n, n2), dtype, g)),
    )


def build_identity(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    x = _rand((draw(st.integers(1, 3)), 4), dtype, _gen(draw))
    return Case(fdl.nn.Identity(5, foo=1), torch.nn.Identity(5, foo=1), (x,))


def _conv_options(draw: st.DrawFn, n: int) -> dict[str, Any]:
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    if all(s == 1 for s in stride) and draw(st.booleans()):
        padding: Any = draw(st.sampled_from(["same", "valid"]))
    else:
        padding = tuple(draw(st.integers(0, 2)) for _ in range(n))
    collapse = draw(st.booleans())  # pass ints instead of tuples
    opts = {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": dilation}
    if collapse:
        opts = {k: (v[0] if isinstance(v, tuple) else v) for k, v in opts.items()}
    opts["padding_mode"] = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    opts["bias"] = draw(st.booleans())
    return opts


def _build_conv(draw: st.DrawFn, dtype: torch.dtype, n: int) -> Case:
    groups, c_in, c_out = _groups_channels(draw)
    opts = _conv_options(draw, n)
    k = opts["kernel_size"]
    d = opts["dilation"]
    ks = k if isinstance(k, tuple) else (k,) * n
    ds = d if isinstance(d, tuple) else (d,) * n
    spatial = tuple(3 + ds[i] * (ks[i] - 1) + draw(st.integers(0, 3)) for i in range(n))
    x = _rand((draw(st.integers(1, 3)), c_in, *spatial), dtype, _gen(draw))
    fdl_cls, torch_cls = (
        (fdl.nn.Conv1d, torch.nn.Conv1d)
        if n == 1
        else (
            fdl.nn.Conv2d,
            torch.nn.Conv2d,
        )
    )
    return Case(
        fdl_cls(c_in, c_out, groups=groups, dtype=dtype, **opts),
        torch_cls(c_in, c_out, groups=groups, dtype=dtype, **opts),
        (x,),
    )


def build_conv1d(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    return _build_conv(draw, dtype, 1)


def build_conv2d(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    return _build_conv(draw, dtype, 2)


def build_conv_transpose2d(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    groups, c_in, c_out = _groups_channels(draw)
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    out_pad = tuple(draw(st.integers(0, max(stride[i], dilation[i]) - 1)) for i in range(2))
    bias = draw(st.booleans())
    hw = (draw(st.integers(3, 5)), draw(st.integers(3, 5)))  # keeps the output non-empty
    x = _rand((draw(st.integers(1, 3)), c_in, *hw), dtype, _gen(draw))
    args = (c_in, c_out, k, stride, padding, out_pad, groups, bias, dilation)
    return Case(
        fdl.nn.ConvTranspose2d(*args, dtype=dtype),
        torch.nn.ConvTranspose2d(*args, dtype=dtype),
        (x,),
    )


def _build_pool(draw: st.DrawFn, dtype: torch.dtype, kind: str, n: int) -> Case:
    k = draw(st.integers(1, 3))
    stride = draw(st.one_of(st.none(), st.integers(1, 3)))
    padding = draw(st.integers(0, k // 2))
    opts: dict[str, Any] = {"stride": stride, "padding": padding}
    opts["ceil_mode"] = draw(st.booleans())
    if kind == "max":
        opts["dilation"] = draw(st.integers(1, 2))
        opts["return_indices"] = draw(st.booleans())
    else:
        opts["count_include_pad"] = draw(st.booleans())
        if n == 2:
            opts["divisor_override"] = draw(st.one_of(st.none(), st.integers(1, 3)))
    reach = (k - 1) * opts.get("dilation", 1) + 1
    spatial = tuple(reach + draw(st.integers(0, 4)) for _ in range(n))
    x = _rand((draw(st.integers(1, 3)), draw(st.integers(1, 3)), *spatial), dtype, _gen(draw))
    name = f"{'Max' if kind == 'max' else 'Avg'}Pool{n}d"
    return Case(getattr(fdl.nn, name)(k, **opts), getattr(torch.nn, name)(k, **opts), (x,))


def build_max_pool1d(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    return _build_pool(draw, dtype, "max", 1)


def build_max_pool2d(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    return _build_pool(draw, dtype, "max", 2)


def build_avg_pool1d(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    return _build_pool(draw, dtype, "avg", 1)


def build_avg_pool2d(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    return _build_pool(draw, dtype, "avg", 2)


def build_adaptive_avg_pool2d(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    size = draw(
        st.one_of(
            st.integers(1, 4),
            st.tuples(st.one_of(st.none(), st.integers(1, 4)), st.integers(1, 4)),
        )
    )
    x = _rand(
        (draw(st.integers(1, 3)), 2, draw(st.integers(1, 7)), draw(st.integers(1, 7))),
        dtype,
        _gen(draw),
    )
    return Case(fdl.nn.AdaptiveAvgPool2d(size), torch.nn.AdaptiveAvgPool2d(size), (x,))


def build_flatten(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    start = draw(st.integers(1, 3))
    end = draw(st.integers(start, 3))
    end = draw(st.sampled_from([end, end - 4]))  # also negative
    x = _rand((2, 2, 3, 2), dtype, _gen(draw))
    return Case(fdl.nn.Flatten(start, end), torch.nn.Flatten(start, end), (x,))


def build_unflatten(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    a, b = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    size = draw(st.sampled_from([(a, b), (a, -1), (a, b, 1)]))
    x = _rand((draw(st.integers(1, 3)), a * b, 2), dtype, _gen(draw))
    return Case(fdl.nn.Unflatten(1, size), torch.nn.Unflatten(1, size), (x,))


def build_embedding(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    num, dim = draw(st.integers(2, 8)), draw(st.integers(1, 4))
    opts = {
        "padding_idx": draw(st.one_of(st.none(), st.integers(-num, num - 1))),
        "max_norm": draw(st.one_of(st.none(), st.floats(0.5, 2.0))),
        "norm_type": draw(st.sampled_from([1.0, 2.0])),
        "scale_grad_by_freq": draw(st.booleans()),
    }
    g = _gen(draw)
    idx = torch.randint(0, num, (draw(st.integers(1, 3)), draw(st.integers(1, 4))), generator=g)
    return Case(
        fdl.nn.Embedding(num, dim, dtype=dtype, **opts),
        torch.nn.Embedding(num, dim, dtype=dtype, **opts),
        (idx,),
        # scale_grad_by_freq counts indices over the whole batch
        vmap=not opts["scale_grad_by_freq"],
    )


def build_dropout(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    p = draw(st.floats(0.0, 1.0))
    x = _rand((draw(st.integers(1, 3)), 5), dtype, _gen(draw))
    return Case(fdl.nn.Dropout(p), torch.nn.Dropout(p).eval(), (x,))  # eval: identity


def build_sequential(draw: st.DrawFn, dtype: torch.dtype) -> Case:
    c1, c2, hidden = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    names = ["conv1", "relu1", "pool", "flatten", "fc1", "drop", "fc2"]
    fdl_layers = [
        fdl.nn.Conv2d(1, c1, 3, padding=1, dtype=dtype),
        fdl.nn.ReLU(),
        fdl.nn.MaxPool2d(2),
        fdl.nn.Flatten(),
        fdl.nn.Linear(c1 * 4 * 4, hidden, dtype=dtype),
        fdl.nn.Dropout(0.3),
        fdl.nn.Linear(hidden, c2, dtype=dtype),
    ]
    torch_layers = [
        torch.nn.Conv2d(1, c1, 3, padding=1, dtype=dtype),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(c1 * 4 * 4, hidden, dtype=dtype),
        torch.nn.Dropout(0.3),
        torch.nn.Linear(hidden, c2, dtype=dtype),
    ]
    x = _rand((draw(st.integers(1, 3)), 1, 8, 8), dtype, _gen(draw))
    if draw(st.booleans()):
        return Case(
            fdl.nn.Sequential(OrderedDict(zip(names, fdl_layers, strict=True))),
            torch.nn.Sequential(OrderedDict(zip(names, torch_layers, strict=True))).eval(),
            (x,),
        )
    return Case(fdl.nn.Sequential(*fdl_layers), torch.nn.Sequential(*torch_layers).eval(), (x,))


# -- the registry -------------------------------------------------------------------


@dataclass
class Entry:
    build: Callable[[st.DrawFn, torch.dtype], Case]
    example: Callable[[], tuple[Any, tuple[torch.Tensor, ...]]]  # fixed small layer + inputs
    bad_input: Callable[[], torch.Tensor] | None = None  # wrong rank or channels


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


LAYERS: dict[str, Entry] = {
    "Linear": Entry(build_linear, lambda: (fdl.nn.Linear(4, 3), (_x(2, 4),)), lambda: _x(2, 5)),
    "Bilinear": Entry(
        build_bilinear, lambda: (fdl.nn.Bilinear(2, 3, 4), (_x(5, 2), _x(5, 3))), None
    ),
    "Identity": Entry(build_identity, lambda: (fdl.nn.Identity(), (_x(2, 3),)), None),
    "Conv1d": Entry(
        build_conv1d, lambda: (fdl.nn.Conv1d(2, 4, 3), (_x(2, 2, 8),)), lambda: _x(2, 3, 8)
    ),
    "Conv2d": Entry(
        build_conv2d,
        lambda: (fdl.nn.Conv2d(2, 4, 3, padding=1), (_x(2, 2, 6, 6),)),
        lambda: _x(2, 3, 6, 6),
    ),
    "ConvTranspose2d": Entry(
        build_conv_transpose2d,
        lambda: (fdl.nn.ConvTranspose2d(2, 3, 3, stride=2), (_x(2, 2, 4, 4),)),
        lambda: _x(2, 3, 4, 4),
    ),
    "MaxPool1d": Entry(
        build_max_pool1d, lambda: (fdl.nn.MaxPool1d(2), (_x(2, 3, 8),)), lambda: _x(8)
    ),
    "MaxPool2d": Entry(
        build_max_pool2d, lambda: (fdl.nn.MaxPool2d(2), (_x(2, 3, 8, 8),)), lambda: _x(8, 8)
    ),
    "AvgPool1d": Entry(
        build_avg_pool1d, lambda: (fdl.nn.AvgPool1d(2), (_x(2, 3, 8),)), lambda: _x(8)
    ),
    "AvgPool2d": Entry(
        build_avg_pool2d, lambda: (fdl.nn.AvgPool2d(2), (_x(2, 3, 8, 8),)), lambda: _x(8, 8)
    ),
    "AdaptiveAvgPool2d": Entry(
        build_adaptive_avg_pool2d,
        lambda: (fdl.nn.AdaptiveAvgPool2d((2, 3)), (_x(2, 3, 7, 5),)),
        lambda: _x(7, 5),
    ),
    "Flatten": Entry(build_flatten, lambda: (fdl.nn.Flatten(), (_x(2, 3, 4),)), None),
    "Unflatten": Entry(
        build_unflatten, lambda: (fdl.nn.Unflatten(1, (2, 3)), (_x(2, 6),)), lambda: _x(2, 5)
    ),
    "Embedding": Entry(
        build_embedding,
        lambda: (fdl.nn.Embedding(10, 3, padding_idx=0), (torch.tensor([[1, 0], [9, 2]]),)),
        None,
    ),
    "Dropout": Entry(build_dropout, lambda: (fdl.nn.Dropout(0.5), (_x(2, 6),)), None),
    "Sequential": Entry(
        build_sequential,
        lambda: (
            fdl.nn.Sequential(
                fdl.nn.Conv2d(1, 2, 3, padding=1),
                fdl.nn.ReLU(),
                fdl.nn.MaxPool2d(2),
                fdl.nn.Flatten(),
                fdl.nn.Linear(2 * 4 * 4, 3),
            ),
            (_x(2, 1, 8, 8),),
        ),
        lambda: _x(2, 2, 8, 8),
    ),
}
NAMES = list(LAYERS)
PARAMETRIC = [n for n in NAMES if LAYERS[n].example()[0].param_shapes()]
# layers on (N, C, H, W) images, checked again with channels-last inputs and conv weights
CHANNELS_LAST = ["Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]
CHANNELS_LAST += ["Sequential"]
LAYOUTS = [(n, "contiguous") for n in NAMES] + [(n, "channels_last") for n in CHANNELS_LAST]


# -- helpers ------------------------------------------------------------------------


def _params_from_torch(case: Case) -> dict[str, Any]:
    # clone: torch writes into its own weights (Embedding max_norm), ours must not alias them
    sd = {k: v.clone() for k, v in case.module.state_dict().items()}
    return fdl.nn.load_state_dict(sd, case.layer)


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _channels_last(case: Case) -> Case:
    """``case`` with channels-last 4-d inputs and torch module (the params follow the module)."""
    module = case.module.to(memory_format=torch.channels_last)
    return Case(case.layer, module, tuple(_cl(x) for x in case.inputs), case.kwargs, case.vmap)


def _first(y: Any) -> torch.Tensor:
    return y[0] if isinstance(y, tuple) else y


def _fdl_grads(case: Case, params: Any, cot: torch.Tensor) -> tuple[Any, list]:
    p = ft.map(lambda t: t.detach().clone().requires_grad_(True), params)
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in case.inputs]
    y = _first(case.layer.apply(p, *xs, **(case.kwargs or {})))
    leaves = ft.leaves(p) + [x for x in xs if x.requires_grad]
    gs = torch.autograd.grad((y * cot).sum(), leaves, allow_unused=True) if leaves else []
    n = len(ft.leaves(p))
    return ft.unflatten(ft.structure(p), gs[:n]), list(gs[n:])


def _torch_grads(case: Case, cot: torch.Tensor) -> tuple[Any, list]:
    named = dict(case.module.named_parameters())
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in case.inputs]
    y = _first(case.module(*xs, **(case.kwargs or {})))
    leaves = list(named.values()) + [x for x in xs if x.requires_grad]
    gs = torch.autograd.grad((y * cot).sum(), leaves, allow_unused=True) if leaves else []
    flat = dict(zip(named, gs[: len(named)], strict=True))
    return ft.from_flat_dict(flat), list(gs[len(named) :])


# -- parity, purity and vmap (hypothesis over constructor options and shapes) ------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "layout"), LAYOUTS)
@SETTINGS
@given(data=st.data())
def test_parity_with_torch(name: str, layout: str, dtype: torch.dtype, data: st.DataObject) -> None:
    case = data.draw(st.composite(lambda draw: LAYERS[name].build(draw, dtype))())
    if layout == "channels_last":
        case = _channels_last(case)
    tol = TOL[dtype]
    params = _params_from_torch(case)
    # values (and purity: apply modifies neither params nor inputs)
    y = assert_pure(case.layer.apply, params, *case.inputs, **(case.kwargs or {}))
    expected = case.module(*case.inputs, **(case.kwargs or {}))
    assert_trees_close(y, expected, rtol=tol, atol=tol)
    if layout == "channels_last":  # the layout is torch's too: what NHWC code reads next
        assert _first(y).stride() == _first(expected).stride()
    # gradients w.r.t. params and inputs, with a random cotangent
    y0 = _first(expected)
    cot = torch.randn(y0.shape, dtype=y0.dtype, generator=torch.Generator().manual_seed(1))
    g_params, g_inputs = _fdl_grads(case, params, cot)
    t_params, t_inputs = _torch_grads(case, cot)
    assert_trees_close(g_params, t_params, rtol=tol, atol=tol)
    assert len(g_inputs) == len(t_inputs)
    for a, b in zip(g_inputs, t_inputs, strict=True):
        assert_trees_close(a, b, rtol=tol, atol=tol)
    # vmap over single examples equals the batched call
    if dtype == torch.float64 and case.vmap:

        def one(*xs: torch.Tensor) -> Any:
            out = case.layer.apply(params, *(x.unsqueeze(0) for x in xs), **(case.kwargs or {}))
            return ft.map(lambda t: t.squeeze(0), out)

        assert_trees_close(torch.func.vmap(one)(*case.inputs), y, rtol=tol, atol=tol)


# -- compile ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_traces_under_compile_fullgraph(name: str) -> None:
    torch._dynamo.reset()
    layer, inputs = LAYERS[name].example()
    params = layer.init(fdl.random.key(0))
    compiled = torch.compile(layer.apply, fullgraph=True, backend="eager")
    assert_trees_close(compiled(params, *inputs), layer.apply(params, *inputs))


def test_compile_inductor_and_no_recompile() -> None:
    torch._dynamo.reset()
    model = fdl.nn.Sequential(
        fdl.nn.Linear(4, 8), fdl.nn.ReLU(), fdl.nn.Dropout(0.5), fdl.nn.Linear(8, 2)
    )
    params = model.init(fdl.random.key(0))

    def f(p: Any, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return model.apply(p, x, key=k, train=True)

    compiled = torch.compile(f, fullgraph=True)
    x = _x(3, 4)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(3):  # new params values and a new key each step
            k = fdl.random.fold_in(fdl.random.key(1), step)
            p = ft.scale(params, 1.0 + step)
            assert_trees_close(compiled(p, x, k), f(p, x, k), rtol=1e-5, atol=1e-6)


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARAMETRIC)
def test_wrong_params_name_path_and_shapes(name: str) -> None:
    layer, inputs = LAYERS[name].example()
    params = layer.init(fdl.random.key(0))
    flat = ft.to_flat_dict(params)
    path = next(iter(flat))
    # wrong shape: path and both shapes in the message
    bad = dict(flat)
    bad[path] = torch.zeros(*flat[path].shape, 2)
    with pytest.raises(ValueError) as err:
        layer.apply(ft.from_flat_dict(bad), *inputs)
    msg = str(err.value)
    assert path in msg and str(tuple(flat[path].shape)) in msg
    assert str((*flat[path].shape, 2)) in msg
    # missing key
    missing = {k: v for k, v in flat.items() if k != path}
    with pytest.raises(ValueError, match=path.split(".")[-1]):
        layer.apply(ft.from_flat_dict(missing), *inputs)
    # extra key
    extra = {**flat, "surprise": torch.zeros(1)}
    with pytest.raises(ValueError, match="surprise"):
        layer.apply(ft.from_flat_dict(extra), *inputs)


@pytest.mark.parametrize("name", [n for n in NAMES if LAYERS[n].bad_input is not None])
def test_wrong_input_names_layer_and_expected_shape(name: str) -> None:
    entry = LAYERS[name]
    layer, _ = entry.example()
    params = layer.init(fdl.random.key(0))
    assert entry.bad_input is not None
    with pytest.raises(ValueError, match=r"expected input") as err:
        layer.apply(params, entry.bad_input())
    assert type(layer).__name__ in str(err.value) or name == "Sequential"


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("Identity", "Sequential")])
def test_unknown_constructor_argument_is_type_error(name: str) -> None:
    layer, _ = LAYERS[name].example()
    cls = type(layer)
    torch_cls = getattr(torch.nn, name)
    with pytest.raises(TypeError):
        cls(**{f.name: getattr(layer, f.name) for f in layer.__dataclass_fields__.values()}, nope=1)
    with pytest.raises(TypeError):
        torch_cls(nope=1)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: fdl.nn.Conv2d(3, 4, 3, groups=2), "divisible by groups"),
        (lambda: fdl.nn.Conv2d(2, 4, 3, stride=2, padding="same"), "strided"),
        (lambda: fdl.nn.Conv2d(2, 4, 3, padding="full"), "padding must be"),
        (lambda: fdl.nn.Conv2d(2, 4, 3, padding_mode="mirror"), "padding_mode"),
        (lambda: fdl.nn.Conv2d(2, 4, (3, 3, 3)), "kernel_size"),
        (lambda: fdl.nn.ConvTranspose2d(2, 4, 3, output_padding=1), "output_padding"),
        (lambda: fdl.nn.MaxPool2d(2, padding=2), "half of the kernel"),
        (lambda: fdl.nn.Dropout(1.5), "between 0 and 1"),
        (lambda: fdl.nn.Embedding(4, 2, padding_idx=4), "padding_idx"),
        (lambda: fdl.nn.Embedding(4, 2, sparse=True), "sparse"),
        (lambda: fdl.nn.Sequential(torch.nn.ReLU()), "fdl.nn layer"),
        (lambda: fdl.nn.Sequential(OrderedDict([("a.b", fdl.nn.ReLU())])), "without '.'"),
    ],
)
def test_bad_constructor_arguments(make: Callable[[], Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_inputs_of_specific_layers() -> None:
    emb = fdl.nn.Embedding(4, 2)
    with pytest.raises(TypeError, match="integer indices"):
        emb.apply(emb.init(fdl.random.key(0)), torch.zeros(3))
    bil = fdl.nn.Bilinear(2, 3, 4)
    with pytest.raises(ValueError, match="leading dimensions"):
        bil.apply(bil.init(fdl.random.key(0)), _x(5, 2), _x(4, 3))
    with pytest.raises(ValueError, match="needs key"):
        fdl.nn.Dropout(0.5).apply({}, _x(3), train=True)
    with pytest.raises(ValueError, match="Flatten"):
        fdl.nn.Flatten(1, 5).apply({}, _x(2, 3))
    with pytest.raises(ValueError, match="output_size"):
        up = fdl.nn.ConvTranspose2d(2, 3, 3, stride=2)
        up.apply(up.init(fdl.random.key(0)), _x(1, 2, 4, 4), output_size=(20, 20))


# -- init statistics ---------------------------------------------------------------------

INIT_CASES = {
    # name: (fdl layer, torch layer, fan_in used by torch's bound)
    "Linear": (fdl.nn.Linear(300, 200), torch.nn.Linear(300, 200), 300),
    "Conv2d": (fdl.nn.Conv2d(16, 64, 3, groups=2), torch.nn.Conv2d(16, 64, 3, groups=2), 8 * 9),
    "Conv1d": (fdl.nn.Conv1d(12, 200, 5), torch.nn.Conv1d(12, 200, 5), 60),
    "ConvTranspose2d": (
        fdl.nn.ConvTranspose2d(64, 32, 3),
        torch.nn.ConvTranspose2d(64, 32, 3),
        32 * 9,
    ),
    "Bilinear": (fdl.nn.Bilinear(20, 30, 40), torch.nn.Bilinear(20, 30, 40), 20),
}


@pytest.mark.parametrize("name", list(INIT_CASES))
def test_init_matches_torch_default_distribution(name: str) -> None:
    layer, module, fan_in = INIT_CASES[name]
    params = layer.init(fdl.random.key(0))
    bound = 1.0 / math.sqrt(fan_in)
    torch.manual_seed(0)
    for pname, torch_value in module.named_parameters():
        ours = params[pname].flatten().double()
        theirs = torch_value.detach().flatten().double()
        assert ours.shape == theirs.shape
        assert float(ours.abs().max()) <= bound
        # KS test against the uniform distribution torch uses: U(-bound, bound)
        ks = stats.kstest(ours.numpy(), stats.uniform(loc=-bound, scale=2 * bound).cdf)
        assert ks.pvalue > 1e-3, (pname, ks)
        if ours.numel() >= 1000:  # moments agree with torch's own draw
            assert abs(float(ours.mean() - theirs.mean())) < 0.1 * bound
            assert abs(float(ours.std() / theirs.std()) - 1) < 0.1
            assert abs(float(ours.std()) - bound / math.sqrt(3)) < 0.05 * bound


def test_init_embedding_is_standard_normal_with_zero_padding_row() -> None:
    params = fdl.nn.Embedding(500, 20, padding_idx=3).init(fdl.random.key(0))
    w = params["weight"]
    assert torch.equal(w[3], torch.zeros(20))
    rest = torch.cat([w[:3], w[4:]]).flatten().double().numpy()
    assert stats.kstest(rest, stats.norm.cdf).pvalue > 1e-3


def test_init_is_deterministic_keyed_and_typed() -> None:
    layer = fdl.nn.Conv2d(3, 4, 3, dtype=torch.float64)
    a, b = layer.init(fdl.random.key(0)), layer.init(fdl.random.key(0))
    assert_trees_close(a, b, rtol=0, atol=0)
    c = layer.init(fdl.random.key(1))
    assert not torch.equal(a["weight"], c["weight"])
    assert {v.dtype for v in ft.leaves(a)} == {torch.float64}
    assert not torch.equal(a["weight"].flatten()[:4], a["bias"])  # weight and bias keys differ
    shapes = layer.param_shapes()
    assert {v.device.type for v in ft.leaves(shapes)} == {"meta"}


@pytest.mark.parametrize(
    ("fn", "torch_fn", "args"),
    [
        (
            fdl.nn.init.kaiming_uniform,
            torch.nn.init.kaiming_uniform_,
            {"a": 0.1, "mode": "fan_out"},
        ),
        (fdl.nn.init.kaiming_normal, torch.nn.init.kaiming_normal_, {"nonlinearity": "relu"}),
        (fdl.nn.init.xavier_uniform, torch.nn.init.xavier_uniform_, {"gain": 2.0}),
        (fdl.nn.init.xavier_normal, torch.nn.init.xavier_normal_, {"gain": 0.5}),
        (fdl.nn.init.uniform, torch.nn.init.uniform_, {"a": -2.0, "b": 3.0}),
        (fdl.nn.init.normal, torch.nn.init.normal_, {"mean": 1.0, "std": 2.0}),
    ],
)
def test_init_functions_match_torch_moments(fn: Callable, torch_fn: Callable, args: dict) -> None:
    shape = (128, 32, 3)
    ours = fn(fdl.random.key(0), shape, **args).double()
    torch.manual_seed(0)
    theirs = torch_fn(torch.empty(shape), **args).double()
    assert ours.shape == theirs.shape
    # about five standard errors for 12288 samples
    assert abs(float(ours.mean() - theirs.mean())) < 0.06 * float(theirs.std())
    assert abs(float(ours.std() / theirs.std()) - 1) < 0.05
    if "uniform" in fn.__name__:  # same bounds
        assert abs(float(ours.abs().max() / theirs.abs().max()) - 1) < 0.01


def test_calculate_gain_and_fans_match_torch() -> None:
    for nl, param in [
        ("relu", None),
        ("tanh", None),
        ("leaky_relu", 0.2),
        ("selu", None),
        ("conv2d", None),
    ]:
        assert fdl.nn.init.calculate_gain(nl, param) == pytest.approx(
            torch.nn.init.calculate_gain(nl, param)
        )
    w = torch.empty(5, 4, 3, 2)
    assert fdl.nn.init.fans(w.shape) == torch.nn.init._calculate_fan_in_and_fan_out(w)
    assert torch.equal(fdl.nn.init.zeros(fdl.random.key(0), (2, 3)), torch.zeros(2, 3))
    assert torch.equal(
        fdl.nn.init.ones(None, 4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    )


# -- dropout and keys ------------------------------------------------------------------


def test_dropout_train_mask_statistics_and_gradient() -> None:
    p = 0.3
    x = torch.ones(20000, dtype=torch.float64, requires_grad=True)
    k = fdl.random.key(0)
    y = fdl.nn.Dropout(p).apply({}, x, key=k, train=True)
    kept = y != 0
    assert abs(float(kept.double().mean()) - (1 - p)) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(g, kept.double() / (1 - p))
    same = fdl.nn.Dropout(p).apply({}, x, key=k, train=True)
    other = fdl.nn.Dropout(p).apply({}, x, key=fdl.random.key(1), train=True)
    assert torch.equal(same, y) and not torch.equal(other, y)
    assert torch.equal(fdl.nn.Dropout(1.0).apply({}, x, key=k, train=True), torch.zeros_like(x))
    assert torch.equal(fF.dropout(x, 0.0, key=None), x)


def test_sequential_splits_keys_per_child() -> None:
    model = fdl.nn.Sequential(fdl.nn.Dropout(0.5), fdl.nn.Dropout(0.5))
    x = torch.ones(1000)
    k = fdl.random.key(0)
    y = model.apply({}, x, key=k, train=True)
    k0, k1 = fdl.random.split(k, 2)
    expected = fF.dropout(fF.dropout(x, 0.5, key=k0), 0.5, key=k1)
    assert torch.equal(y, expected)
    assert torch.equal(model.apply({}, x, key=k, train=True), y)


# -- Sequential specifics ------------------------------------------------------------------


def test_sequential_with_batchnorm_threads_state_like_torch() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, dtype=torch.float64),
        torch.nn.BatchNorm2d(3, dtype=torch.float64),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 4 * 4, 2, dtype=torch.float64),
        torch.nn.BatchNorm1d(2, momentum=None, dtype=torch.float64),
    )
    model = fdl.nn.Sequential(
        fdl.nn.Conv2d(2, 3, 3, dtype=torch.float64),
        fdl.nn.BatchNorm2d(3, dtype=torch.float64),
        fdl.nn.ReLU(),
        fdl.nn.Flatten(),
        fdl.nn.Linear(3 * 4 * 4, 2, dtype=torch.float64),
        fdl.nn.BatchNorm1d(2, momentum=None, dtype=torch.float64),
    )
    assert model.stateful
    params, state = fdl.nn.load_state_dict(net.state_dict(), model, with_state=True)
    assert set(state) == {"1", "5"}
    net.train()
    for _ in range(3):
        x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
        y, state = assert_pure(model.apply, params, x, state=state, train=True)
        assert_trees_close(y, net(x), rtol=1e-10, atol=1e-10)
    torch_state = {k: v for k, v in net.state_dict().items() if "running" in k or "num_b" in k}
    assert_trees_close(fdl.nn.state_dict({}, state), torch_state, rtol=1e-10, atol=1e-10)
    net.eval()
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    y, _ = model.apply(params, x, state=state)
    assert_trees_close(y, net(x), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="state="):
        model.apply(params, x)
    with pytest.raises(ValueError, match="state at"):
        model.apply(params, x, state={"1": state["1"]})


def test_sequential_container_protocol() -> None:
    model = fdl.nn.Sequential(
        OrderedDict(fc1=fdl.nn.Linear(2, 3), act=fdl.nn.ReLU(), fc2=fdl.nn.Linear(3, 1))
    )
    assert len(model) == 3 and model.fc1 == fdl.nn.Linear(2, 3) and model[1] == fdl.nn.ReLU()
    tail = model[1:]
    assert [n for n, _ in tail.named_children()] == ["act", "fc2"]
    params = model.init(fdl.random.key(0))
    assert list(params) == ["fc1", "fc2"]
    x = _x(4, 2)
    with_empty = {**params, "act": {}}  # an empty entry for a parameterless child is accepted
    assert torch.equal(model.apply(with_empty, x), model.apply(params, x))
    nested = fdl.nn.Sequential(model, fdl.nn.Sequential(fdl.nn.ReLU()))
    np_ = nested.init(fdl.random.key(0))
    assert list(fdl.nn.state_dict(np_)) == [
        "0.fc1.weight",
        "0.fc1.bias",
        "0.fc2.weight",
        "0.fc2.bias",
    ]
    with pytest.raises(AttributeError):
        model.foo = 1  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="non-empty state"):
        model.apply(params, x, state={"fc1": {"running_mean": torch.zeros(1)}})


def test_conv_transpose_output_size_matches_torch() -> None:
    up = fdl.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, dtype=torch.float64)
    ref = torch.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, dtype=torch.float64)
    params = fdl.nn.load_state_dict(ref.state_dict(), up)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    for size in [(9, 9), (10, 10), (9, 10), [1, 3, 10, 9]]:
        assert_trees_close(
            up.apply(params, x, output_size=size), ref(x, output_size=size), rtol=1e-10, atol=1e-10
        )


def test_stateful_sequential_under_grad_and_compile() -> None:
    torch._dynamo.reset()
    model = fdl.nn.Sequential(
        fdl.nn.Conv2d(1, 2, 3),
        fdl.nn.BatchNorm2d(2),
        fdl.nn.ReLU(),
        fdl.nn.Flatten(),
        fdl.nn.Dropout(0.2),
        fdl.nn.Linear(2 * 4 * 4, 3),
    )
    params, state = model.init(fdl.random.key(0)), model.init_state()

    def loss(p: Any, s: Any, x: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, Any]:
        y, new_state = model.apply(p, x, state=s, key=k, train=True)
        return y.square().mean(), new_state

    def step(p: Any, s: Any, x: torch.Tensor, k: torch.Tensor) -> tuple[Any, Any]:
        return torch.func.grad(loss, has_aux=True)(p, s, x, k)

    x, k = _x(4, 1, 6, 6), fdl.random.key(1)
    grads, new_state = step(params, state, x, k)
    assert int(new_state["1"]["num_batches_tracked"]) == 1
    compiled = torch.compile(step, fullgraph=True, backend="eager")
    assert_trees_close(compiled(params, state, x, k), (grads, new_state), rtol=1e-5, atol=1e-6)
