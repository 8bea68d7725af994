"""The catalogue's normalisation layers against torch.nn: values, gradients, running state.

Registry: (name, fdl layer, torch layer, kwargs, input shape). Stateless entries compare
values and gradients (float64 1e-10, float32 1e-5) batched and unbatched; stateful entries
also run a few training steps and compare every buffer, then evaluation with the tracked
statistics.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _catalog_parity import check_fn, check_layer, close, state_dict_keys

import fdl
import fdl.nn.functional as FF

STATELESS = [
    ("RMSNorm", fdl.nn.RMSNorm, torch.nn.RMSNorm, {"normalized_shape": 5}, (3, 4, 5), (4, 5)),
    ("RMSNorm-2d", fdl.nn.RMSNorm, torch.nn.RMSNorm, {"normalized_shape": (4, 5), "eps": 1e-3},
     (3, 4, 5), (4, 5)),
    ("RMSNorm-noaffine", fdl.nn.RMSNorm, torch.nn.RMSNorm,
     {"normalized_shape": [5], "elementwise_affine": False}, (3, 5), (5,)),
    ("LocalResponseNorm", fdl.nn.LocalResponseNorm, torch.nn.LocalResponseNorm, {"size": 3},
     (2, 6, 4, 5), (6, 4, 5)),
    ("LocalResponseNorm-even", fdl.nn.LocalResponseNorm, torch.nn.LocalResponseNorm,
     {"size": 4, "alpha": 0.1, "beta": 0.5, "k": 2.0}, (2, 6, 4), None),
    ("LocalResponseNorm-3d", fdl.nn.LocalResponseNorm, torch.nn.LocalResponseNorm,
     {"size": 5, "alpha": 0.3}, (2, 7, 2, 3, 2), None),
]  # fmt: skip
STATELESS_CASES = [(*c[:4], c[4]) for c in STATELESS] + [
    (*c[:4], c[5]) for c in STATELESS if c[5] is not None
]
STATELESS_IDS = [c[0] for c in STATELESS] + [f"{c[0]}-unbatched" for c in STATELESS if c[5]]


def _randomise(module: torch.nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + 1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("name", "fdl_layer", "torch_layer", "kwargs", "shape"), STATELESS_CASES, ids=STATELESS_IDS
)
def test_stateless_norm_matches_torch(name, fdl_layer, torch_layer, kwargs, shape, dtype):
    g = torch.Generator().manual_seed(0)
    module = torch_layer(**kwargs).to(dtype)
    _randomise(module, g)
    layer = fdl_layer(**kwargs, **({"dtype": dtype} if "normalized_shape" in kwargs else {}))
    assert state_dict_keys(layer) == set(module.state_dict())
    check_layer(layer, module, [torch.randn(shape, generator=g, dtype=dtype) * 2], dtype)


# (name, fdl layer, torch layer, kwargs, batched shape, unbatched shape or None)
STATEFUL = [
    ("BatchNorm3d", fdl.nn.BatchNorm3d, torch.nn.BatchNorm3d, {}, (3, 4, 2, 3, 2), None),
    ("BatchNorm3d-cumulative", fdl.nn.BatchNorm3d, torch.nn.BatchNorm3d,
     {"momentum": None, "affine": False}, (3, 4, 2, 3, 2), None),
    ("BatchNorm3d-untracked", fdl.nn.BatchNorm3d, torch.nn.BatchNorm3d,
     {"track_running_stats": False}, (3, 4, 2, 3, 2), None),
    ("InstanceNorm1d", fdl.nn.InstanceNorm1d, torch.nn.InstanceNorm1d, {}, (3, 4, 6), (4, 6)),
    ("InstanceNorm1d-affine-tracked", fdl.nn.InstanceNorm1d, torch.nn.InstanceNorm1d,
     {"affine": True, "track_running_stats": True}, (3, 4, 6), (4, 6)),
    ("InstanceNorm2d", fdl.nn.InstanceNorm2d, torch.nn.InstanceNorm2d, {"eps": 1e-3},
     (3, 4, 3, 5), (4, 3, 5)),
    ("InstanceNorm2d-tracked", fdl.nn.InstanceNorm2d, torch.nn.InstanceNorm2d,
     {"track_running_stats": True, "momentum": 0.3}, (3, 4, 3, 5), (4, 3, 5)),
    ("InstanceNorm2d-tracked-nomomentum", fdl.nn.InstanceNorm2d, torch.nn.InstanceNorm2d,
     {"track_running_stats": True, "momentum": None, "affine": True}, (3, 4, 3, 5), None),
    ("InstanceNorm3d-affine", fdl.nn.InstanceNorm3d, torch.nn.InstanceNorm3d,
     {"affine": True}, (2, 3, 2, 3, 4), (3, 2, 3, 4)),
    ("InstanceNorm3d-tracked", fdl.nn.InstanceNorm3d, torch.nn.InstanceNorm3d,
     {"affine": True, "track_running_stats": True}, (2, 3, 2, 3, 4), (3, 2, 3, 4)),
]  # fmt: skip
STATEFUL_CASES = [(*c[:4], c[4]) for c in STATEFUL] + [
    (*c[:4], c[5]) for c in STATEFUL if c[5] is not None
]
STATEFUL_IDS = [c[0] for c in STATEFUL] + [f"{c[0]}-unbatched" for c in STATEFUL if c[5]]
STATEFUL_SHAPES = {c[0]: c[4] for c in STATEFUL}


def _step(layer, module, params, state, x, train, dtype, what):
    """One forward of each; compares outputs, gradients (input and params) and buffers."""
    module.train(train)
    cot = torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=dtype) + 0.5
    xt = x.clone().requires_grad_(True)
    yt = module(xt)
    t_grads = torch.autograd.grad((yt * cot).sum(), [xt, *module.parameters()])
    xf = x.clone().requires_grad_(True)
    pf = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    yf, new_state = layer.apply(pf, xf, state=state, train=train)
    f_grads = torch.autograd.grad((yf * cot).sum(), [xf, *pf.values()])
    close(yf.detach(), yt.detach(), dtype, f"{what}: value")
    close(list(f_grads), list(t_grads), dtype, f"{what}: gradients")
    buffers = {k: v for k, v in module.state_dict().items() if k not in params}
    close(new_state, buffers, dtype, f"{what}: state")
    return new_state


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("name", "fdl_layer", "torch_layer", "kwargs", "shape"), STATEFUL_CASES, ids=STATEFUL_IDS
)
def test_stateful_norm_matches_torch(name, fdl_layer, torch_layer, kwargs, shape, dtype):
    g = torch.Generator().manual_seed(0)
    batched = len(shape) == len(STATEFUL_SHAPES[name])
    c = shape[1] if batched else shape[0]
    module = torch_layer(c, **kwargs).to(dtype)
    _randomise(module, g)
    layer = fdl_layer(c, **kwargs, dtype=dtype)
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    assert set(params) == set(layer.init())
    assert state_dict_keys(layer) == set(module.state_dict())
    state = layer.init_state()
    close(state, {k: v for k, v in module.state_dict().items() if k not in params}, dtype)
    for step in range(3):  # training: the batch statistics and the running update
        x = torch.randn(shape, generator=g, dtype=dtype) * 2 + step
        state = _step(layer, module, params, state, x, True, dtype, f"train step {step}")
    x = torch.randn(shape, generator=g, dtype=dtype)
    after = _step(layer, module, params, state, x, False, dtype, "eval")
    assert after is state  # evaluation leaves the state alone


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("fdl_fn", "torch_fn", "shape", "kwargs"),
    [
        (FF.instance_norm, F.instance_norm, (2, 3, 5), {"eps": 1e-3}),
        (FF.rms_norm, F.rms_norm, (2, 3, 5), {"normalized_shape": (3, 5)}),
        (FF.local_response_norm, F.local_response_norm, (2, 5, 3), {"size": 2, "k": 0.5}),
    ],
)
def test_functions_match_torch(fdl_fn, torch_fn, shape, kwargs, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    check_fn(fdl_fn, torch_fn, [x], kwargs, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("size", "channels"), [(3, 8), (5, 8), (4, 6), (1, 3), (7, 3)])
def test_cross_map_lrn2d_matches_torch_forward(size, channels, dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, channels, 3, 4, generator=g, dtype=dtype).requires_grad_(True)
    layer = fdl.nn.CrossMapLRN2d(size, alpha=0.5, beta=0.75, k=1.0)
    y = layer.apply({}, x)
    want = torch.nn.CrossMapLRN2d(size, alpha=0.5, beta=0.75, k=1.0)(x)
    close(y.detach(), want.detach(), dtype)
    # the gradient is the derivative of this forward (torch's backward assumes another window)
    if dtype == torch.float64:
        d = torch.randn(x.shape, generator=g, dtype=dtype)
        h = 1e-6
        fd = (layer.apply({}, x.detach() + h * d) - layer.apply({}, x.detach() - h * d)) / (2 * h)
        (gx,) = torch.autograd.grad(y.sum(), x)
        assert abs(float(fd.sum() - (gx * d).sum())) < 1e-6
