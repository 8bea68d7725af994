"""The catalogue's activation layers and functions against torch.nn / torch.nn.functional.

One registry at the top: (name, fdl layer, torch layer, fdl function, torch function,
options). Inputs include every kink exactly (0, +-lambd, +-3, 6, the thresholds), so the
gradients there are compared too. Tolerances: float64 1e-10, float32 1e-5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from _catalog_parity import check_fn, check_layer, close, state_dict_keys

import fdl
import fdl.nn.functional as FF


@dataclass(frozen=True)
class ActCase:
    name: str
    fdl_layer: type
    torch_layer: type
    fdl_fn: Callable[..., torch.Tensor]
    torch_fn: Callable[..., torch.Tensor]
    options: tuple[dict, ...] = ({},)
    channels: bool = False  # input laid out (N, C, H, W) / (C, H, W)
    f64_grad_rtol: float | None = None  # where torch's float64 kernel uses a float32 constant


ACTIVATIONS: list[ActCase] = [
    ActCase("CELU", fdl.nn.CELU, torch.nn.CELU, FF.celu, F.celu, ({}, {"alpha": 0.5})),
    ActCase("SELU", fdl.nn.SELU, torch.nn.SELU, FF.selu, F.selu),
    ActCase("GLU", fdl.nn.GLU, torch.nn.GLU, FF.glu, F.glu, ({}, {"dim": 1}, {"dim": 0})),
    ActCase(
        "Hardshrink",
        fdl.nn.Hardshrink,
        torch.nn.Hardshrink,
        FF.hardshrink,
        F.hardshrink,
        ({}, {"lambd": 1.0}),
    ),
    # torch's float64 hardsigmoid gradient is float32(1/6): relative error 2**-24 * 1/6 scale
    ActCase(
        "Hardsigmoid",
        fdl.nn.Hardsigmoid,
        torch.nn.Hardsigmoid,
        FF.hardsigmoid,
        F.hardsigmoid,
        f64_grad_rtol=5e-8,
    ),
    ActCase("Hardswish", fdl.nn.Hardswish, torch.nn.Hardswish, FF.hardswish, F.hardswish),
    ActCase(
        "Hardtanh",
        fdl.nn.Hardtanh,
        torch.nn.Hardtanh,
        FF.hardtanh,
        F.hardtanh,
        ({}, {"min_val": -0.5, "max_val": 3.0}),
    ),
    ActCase("LogSigmoid", fdl.nn.LogSigmoid, torch.nn.LogSigmoid, FF.logsigmoid, F.logsigmoid),
    ActCase("Mish", fdl.nn.Mish, torch.nn.Mish, FF.mish, F.mish),
    ActCase("ReLU6", fdl.nn.ReLU6, torch.nn.ReLU6, FF.relu6, F.relu6),
    ActCase(
        "Softmin", fdl.nn.Softmin, torch.nn.Softmin, FF.softmin, F.softmin, ({"dim": 1}, {"dim": 0})
    ),
    ActCase(
        "Softplus",
        fdl.nn.Softplus,
        torch.nn.Softplus,
        FF.softplus,
        F.softplus,
        ({}, {"beta": 2.0}, {"beta": 0.5, "threshold": 3.0}),
    ),
    ActCase(
        "Softshrink",
        fdl.nn.Softshrink,
        torch.nn.Softshrink,
        FF.softshrink,
        F.softshrink,
        ({}, {"lambd": 1.0}),
    ),
    ActCase("Softsign", fdl.nn.Softsign, torch.nn.Softsign, FF.softsign, F.softsign),
    ActCase("Tanhshrink", fdl.nn.Tanhshrink, torch.nn.Tanhshrink, FF.tanhshrink, F.tanhshrink),
    ActCase(
        "Threshold",
        fdl.nn.Threshold,
        torch.nn.Threshold,
        FF.threshold,
        F.threshold,
        ({"threshold": 1.0, "value": -2.0}, {"threshold": -0.5, "value": 0.0}),
    ),
    ActCase(
        "RReLU_eval",
        fdl.nn.RReLU,
        torch.nn.RReLU,
        FF.rrelu,
        F.rrelu,
        ({}, {"lower": 0.2, "upper": 0.6}),
    ),
    ActCase(
        "Softmax2d",
        fdl.nn.Softmax2d,
        torch.nn.Softmax2d,
        lambda x: FF.softmax(x, -3),
        lambda x: F.softmax(x, -3),
        channels=True,
    ),
]

CASES = [(c, o) for c in ACTIVATIONS for o in c.options]
CASE_IDS = [f"{c.name}-{i}" for c in ACTIVATIONS for i, _ in enumerate(c.options)]
KINKS = [0.0, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, 6.0, 1.5, 10.0, -10.0, 25.0, -25.0, 2.0]


def _input(dtype: torch.dtype, batched: bool, channels: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (2, 4, 6, 2) if batched else (4, 6, 2)
    x = torch.randn(shape, generator=g, dtype=dtype) * 3
    flat = x.reshape(-1).clone()
    flat[: len(KINKS)] = torch.tensor(KINKS, dtype=dtype)
    return flat.reshape(shape)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("case", "opt"), CASES, ids=CASE_IDS)
def test_layer_matches_torch(case, opt, dtype, batched):
    x = _input(dtype, batched, case.channels)
    tol = case.f64_grad_rtol if dtype == torch.float64 else None
    check_layer(case.fdl_layer(**opt), case.torch_layer(**opt).eval(), [x], dtype, grad_tol=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("case", "opt"), CASES, ids=CASE_IDS)
def test_function_matches_torch(case, opt, dtype):
    tol = case.f64_grad_rtol if dtype == torch.float64 else None
    x = _input(dtype, True, case.channels)
    check_fn(case.fdl_fn, case.torch_fn, [x], opt, dtype, grad_tol=tol)


@pytest.mark.parametrize(("case", "opt"), CASES, ids=CASE_IDS)
def test_no_params_and_input_unchanged(case, opt):
    layer = case.fdl_layer(**opt)
    assert state_dict_keys(layer) == set(case.torch_layer(**opt).state_dict()) == set()
    x = _input(torch.float64, True, case.channels)
    before = x.clone()
    layer.apply({}, x)
    assert torch.equal(x, before)


# --------------------------------------------------------------------------- PReLU


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("num_parameters", "init", "shape"),
    [(1, 0.25, (2, 4, 3)), (4, 0.1, (2, 4, 3)), (1, -0.3, (4,)), (1, 0.5, ()), (3, 0.2, (5, 3))],
)
def test_prelu_matches_torch(num_parameters, init, shape, dtype):
    module = torch.nn.PReLU(num_parameters, init)
    with torch.no_grad():  # distinct slopes per channel, so a wrong broadcast fails
        module.weight.add_(torch.linspace(0, 0.5, num_parameters))
    layer = fdl.nn.PReLU(num_parameters, init, dtype=dtype)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    check_layer(layer, module, [x], dtype)
    fresh = layer.init(fdl.random.key(0))
    assert torch.equal(fresh["weight"], torch.full((num_parameters,), init, dtype=dtype))
    expected = torch.nn.PReLU(num_parameters, init, dtype=dtype).state_dict()  # init in float32
    close(fresh, dict(expected), torch.float32)


def test_prelu_channel_mismatch():
    layer = fdl.nn.PReLU(3)
    with pytest.raises(ValueError, match="3 slopes"):
        layer.apply(layer.init(fdl.random.key(0)), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="3 slopes"):
        layer.apply(layer.init(fdl.random.key(0)), torch.zeros(3))  # 1-d: one channel


# --------------------------------------------------------------------------- RReLU (training)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_rrelu_training_slopes_from_key(dtype):
    layer = fdl.nn.RReLU(0.1, 0.4)
    x = -torch.rand(2000, dtype=dtype) - 0.1
    x[::2] *= -1  # half positive
    y = layer.apply({}, x, key=fdl.random.key(3), train=True)
    assert torch.equal(y, layer.apply({}, x, key=fdl.random.key(3), train=True))
    assert not torch.equal(y, layer.apply({}, x, key=fdl.random.key(4), train=True))
    pos = x > 0
    assert torch.equal(y[pos], x[pos])
    slopes = y[~pos] / x[~pos]
    assert bool((slopes >= 0.1 - 1e-6).all() and (slopes <= 0.4 + 1e-6).all())
    assert abs(float(slopes.mean()) - 0.25) < 0.02  # U(0.1, 0.4) has mean 0.25
    # torch's training mode: y = x * noise with noise the slope where x <= 0, 1 elsewhere
    noise = torch.where(
        pos, 1.0, fdl.random.uniform(fdl.random.key(3), (2000,), 0.1, 0.4, dtype=dtype)
    )
    close(y, x * noise, dtype)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(layer.apply({}, xg, key=fdl.random.key(3), train=True).sum(), xg)
    close(g, noise, dtype)


def test_rrelu_training_needs_key():
    with pytest.raises(ValueError, match="key"):
        fdl.nn.RReLU().apply({}, torch.zeros(3), train=True)


# --------------------------------------------------------------------------- gumbel_softmax


@pytest.mark.parametrize("hard", [False, True])
def test_gumbel_softmax_distribution_and_gradient(hard):
    logits = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    n = 20000
    y = FF.gumbel_softmax(logits.expand(n, 3), tau=0.5, hard=hard, key=fdl.random.key(0))
    assert torch.allclose(y.sum(-1), torch.ones(n, dtype=torch.float64))
    freq = torch.bincount(y.argmax(-1), minlength=3).double() / n
    assert torch.allclose(freq, torch.softmax(logits, 0), atol=0.02)  # Gumbel-max: argmax ~ p
    lg = logits.expand(4, 3).clone().requires_grad_(True)
    out = FF.gumbel_softmax(lg, tau=0.5, hard=hard, key=fdl.random.key(1))
    soft = FF.gumbel_softmax(lg, tau=0.5, hard=False, key=fdl.random.key(1))
    if hard:
        assert set(out.detach().reshape(-1).tolist()) <= {0.0, 1.0}
    c = torch.randn(4, 3, dtype=torch.float64)
    (g_out,) = torch.autograd.grad((out * c).sum(), lg)
    (g_soft,) = torch.autograd.grad((soft * c).sum(), lg)
    close(g_out, g_soft, torch.float64)  # straight-through: the soft sample's gradient


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("fn", "args", "match"),
    [
        (FF.glu, (torch.zeros(3),), "even"),
        (FF.hardtanh, (torch.zeros(3), 1.0, -1.0), "min_val"),
        (FF.softshrink, (torch.zeros(3), -1.0), "lambda"),
        (FF.relu6, (torch.zeros(3), True), "inplace"),
    ],
)
def test_bad_arguments(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_softmax2d_rank():
    with pytest.raises(ValueError, match="Softmax2d"):
        fdl.nn.Softmax2d().apply({}, torch.zeros(2, 3))
