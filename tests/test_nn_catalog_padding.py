"""Padding layers and ``pad`` against torch.nn / torch.nn.functional.pad: values and gradients.

Registry: (fdl layer, torch layer, spatial dims, paddings). Every entry runs batched and
unbatched, float64 and float32; gradients sum every copy into its source as torch's do.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _catalog_parity import check_fn, check_layer

import fdl
import fdl.nn.functional as FF

PADDINGS = {
    1: (2, (1, 3), (0, 2), (3, 0)),
    2: (1, (1, 2, 0, 3), (2, 0, 1, 1)),
    3: (1, (1, 0, 2, 1, 0, 2)),
}
NEGATIVE = {1: ((-1, 2),), 2: ((1, -2, -1, 2),), 3: ((-1, 1, 0, -2, 1, 1),)}

PAD_LAYERS = [
    (f"{kind}{d}d", getattr(fdl.nn, f"{kind}{d}d"), getattr(torch.nn, f"{kind}{d}d"), d, extra)
    for kind, extra in [
        ("ZeroPad", {}),
        ("ConstantPad", {"value": 1.5}),
        ("ReflectionPad", {}),
        ("ReplicationPad", {}),
        ("CircularPad", {}),
    ]
    for d in (1, 2, 3)
]
CASES = [
    (name, fl, tl, d, extra, p)
    for name, fl, tl, d, extra in PAD_LAYERS
    for p in PADDINGS[d] + (NEGATIVE[d] if name.startswith(("Zero", "Constant")) else ())
]
IDS = [f"{c[0]}-{c[5]}" for c in CASES]
SPATIAL = {1: (5,), 2: (4, 5), 3: (3, 4, 5)}


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("name", "fdl_layer", "torch_layer", "d", "extra", "padding"), CASES, ids=IDS
)
def test_layer_matches_torch(name, fdl_layer, torch_layer, d, extra, padding, dtype, batched):
    shape = ((2, 3) if batched else (3,)) + SPATIAL[d]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    check_layer(fdl_layer(padding, **extra), torch_layer(padding, **extra), [x], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("shape", "pad", "kwargs"),
    [
        ((2, 3, 4), (1, 2), {"mode": "constant", "value": -3.0}),
        ((2, 3, 4), (1, 2, 0, 1, 2, 0), {"mode": "constant"}),  # more dims than spatial ones
        ((5,), (2, 2), {}),
        ((3, 4), (-1, -1, 1, 0), {"value": 2.0}),
        ((1, 2, 4, 5), (3, 3, 3, 2), {"mode": "reflect"}),
        ((1, 2, 4, 5), (6, 0, 1, 7), {"mode": "replicate"}),
        ((2, 4, 5), (5, 5, 4, 4), {"mode": "circular"}),
        ((2, 1, 3, 4, 5), (1, 1, 2, 2, 2, 2), {"mode": "reflect"}),
    ],
)
def test_pad_function_matches_torch(shape, pad, kwargs, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    check_fn(FF.pad, F.pad, [x], {"pad": pad, **kwargs}, dtype)


@pytest.mark.parametrize(
    ("layer", "shape", "match"),
    [
        (fdl.nn.ReflectionPad1d(3), (1, 2, 3), "less than"),
        (fdl.nn.CircularPad1d(4), (1, 2, 3), "at most"),
        (fdl.nn.ReflectionPad2d(1), (2, 3), "3-d or 4-d"),
        (fdl.nn.ZeroPad1d((-4, 0)), (1, 2, 3), "empty"),
    ],
)
def test_bad_padding(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer.apply({}, torch.zeros(shape))


def test_padding_argument_checked_at_construction():
    with pytest.raises(TypeError, match="4 ints"):
        fdl.nn.ZeroPad2d((1, 2))


def test_state_dict_keys_and_purity():
    x = torch.randn(1, 2, 4)
    before = x.clone()
    layer = fdl.nn.ReflectionPad1d(2)
    assert layer.init(fdl.random.key(0)) == {} == dict(torch.nn.ReflectionPad1d(2).state_dict())
    layer.apply({}, x)
    assert torch.equal(x, before)
