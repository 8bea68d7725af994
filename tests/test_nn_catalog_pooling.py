"""Conv3d and the 1-3 d pooling layers against torch.nn: values, gradients, state_dict keys.

Registry: (name, fdl layer, torch layer, kwargs, batched shape, unbatched shape or None).
float64 1e-10, float32 1e-5. MaxUnpool is checked on the indices of the matching max pool.
"""

from __future__ import annotations

import pytest
import torch
from _catalog_parity import check_layer, close, state_dict_keys

import fdl

LAYERS = [
    ("Conv3d", fdl.nn.Conv3d, torch.nn.Conv3d,
     {"in_channels": 2, "out_channels": 4, "kernel_size": 3}, (2, 2, 4, 5, 5), (2, 4, 5, 5)),
    ("Conv3d-strided-grouped", fdl.nn.Conv3d, torch.nn.Conv3d,
     {"in_channels": 4, "out_channels": 6, "kernel_size": (2, 3, 1), "stride": (1, 2, 2),
      "padding": 1, "dilation": (1, 1, 2), "groups": 2}, (2, 4, 4, 5, 6), None),
    ("Conv3d-same-reflect", fdl.nn.Conv3d, torch.nn.Conv3d,
     {"in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": "same",
      "padding_mode": "reflect", "bias": False}, (1, 2, 4, 4, 4), None),
    ("ConvTranspose1d", fdl.nn.ConvTranspose1d, torch.nn.ConvTranspose1d,
     {"in_channels": 2, "out_channels": 3, "kernel_size": 4, "stride": 2, "padding": 1},
     (2, 2, 5), (2, 5)),
    ("ConvTranspose1d-all", fdl.nn.ConvTranspose1d, torch.nn.ConvTranspose1d,
     {"in_channels": 4, "out_channels": 6, "kernel_size": 3, "stride": 3, "padding": 1,
      "output_padding": 1, "groups": 2, "dilation": 2, "bias": False}, (2, 4, 5), None),
    ("ConvTranspose3d", fdl.nn.ConvTranspose3d, torch.nn.ConvTranspose3d,
     {"in_channels": 2, "out_channels": 3, "kernel_size": (2, 3, 2), "stride": 2},
     (2, 2, 2, 3, 4), (2, 2, 3, 4)),
    ("ConvTranspose3d-all", fdl.nn.ConvTranspose3d, torch.nn.ConvTranspose3d,
     {"in_channels": 4, "out_channels": 2, "kernel_size": 3, "stride": (1, 2, 2), "padding": 1,
      "output_padding": (0, 1, 1), "groups": 2}, (1, 4, 3, 3, 4), None),
    ("MaxPool3d", fdl.nn.MaxPool3d, torch.nn.MaxPool3d, {"kernel_size": 2}, (2, 3, 4, 4, 6),
     (3, 4, 4, 6)),
    ("MaxPool3d-all", fdl.nn.MaxPool3d, torch.nn.MaxPool3d,
     {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1, "ceil_mode": True},
     (2, 3, 5, 6, 7), None),
    ("MaxPool3d-indices", fdl.nn.MaxPool3d, torch.nn.MaxPool3d,
     {"kernel_size": 2, "return_indices": True}, (2, 3, 4, 4, 4), None),
    ("AvgPool3d", fdl.nn.AvgPool3d, torch.nn.AvgPool3d, {"kernel_size": 2}, (2, 3, 4, 4, 6),
     (3, 4, 4, 6)),
    ("AvgPool3d-pad-exclude", fdl.nn.AvgPool3d, torch.nn.AvgPool3d,
     {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False},
     (2, 3, 5, 6, 7), None),
    ("AvgPool3d-divisor", fdl.nn.AvgPool3d, torch.nn.AvgPool3d,
     {"kernel_size": (2, 2, 3), "divisor_override": 5}, (2, 3, 4, 4, 6), None),
    ("AdaptiveAvgPool1d", fdl.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool1d,
     {"output_size": 3}, (2, 3, 7), (3, 7)),
    ("AdaptiveAvgPool3d", fdl.nn.AdaptiveAvgPool3d, torch.nn.AdaptiveAvgPool3d,
     {"output_size": (2, None, 3)}, (2, 3, 5, 4, 7), (3, 5, 4, 7)),
    ("AdaptiveMaxPool1d", fdl.nn.AdaptiveMaxPool1d, torch.nn.AdaptiveMaxPool1d,
     {"output_size": 3}, (2, 3, 7), (3, 7)),
    ("AdaptiveMaxPool1d-indices", fdl.nn.AdaptiveMaxPool1d, torch.nn.AdaptiveMaxPool1d,
     {"output_size": 4, "return_indices": True}, (2, 3, 7), None),
    ("AdaptiveMaxPool2d", fdl.nn.AdaptiveMaxPool2d, torch.nn.AdaptiveMaxPool2d,
     {"output_size": (3, 2)}, (2, 3, 7, 5), (3, 7, 5)),
    ("AdaptiveMaxPool2d-indices", fdl.nn.AdaptiveMaxPool2d, torch.nn.AdaptiveMaxPool2d,
     {"output_size": 2, "return_indices": True}, (2, 3, 7, 5), None),
    ("AdaptiveMaxPool3d", fdl.nn.AdaptiveMaxPool3d, torch.nn.AdaptiveMaxPool3d,
     {"output_size": 2, "return_indices": True}, (2, 3, 5, 4, 3), (3, 5, 4, 3)),
    ("LPPool1d", fdl.nn.LPPool1d, torch.nn.LPPool1d, {"norm_type": 2, "kernel_size": 3},
     (2, 3, 7), (3, 7)),
    ("LPPool1d-p3-stride", fdl.nn.LPPool1d, torch.nn.LPPool1d,
     {"norm_type": 3.0, "kernel_size": 2, "stride": 1, "ceil_mode": True}, (2, 3, 7), None),
    ("LPPool2d", fdl.nn.LPPool2d, torch.nn.LPPool2d, {"norm_type": 2, "kernel_size": (2, 3)},
     (2, 3, 6, 7), (3, 6, 7)),
    ("LPPool3d", fdl.nn.LPPool3d, torch.nn.LPPool3d,
     {"norm_type": 1.5, "kernel_size": 2, "stride": (1, 2, 2)}, (2, 3, 4, 4, 6), None),
    ("Unfold", fdl.nn.Unfold, torch.nn.Unfold, {"kernel_size": (2, 3)}, (2, 3, 5, 6), (3, 5, 6)),
    ("Unfold-all", fdl.nn.Unfold, torch.nn.Unfold,
     {"kernel_size": 3, "dilation": 2, "padding": 1, "stride": 2}, (2, 3, 7, 8), None),
    ("Fold", fdl.nn.Fold, torch.nn.Fold, {"output_size": (4, 5), "kernel_size": 2},
     (2, 12, 12), (12, 12)),
    ("Fold-all", fdl.nn.Fold, torch.nn.Fold,
     {"output_size": (7, 8), "kernel_size": 3, "dilation": 2, "padding": 1, "stride": 2},
     (2, 27, 9), None),
]  # fmt: skip
CASES = [(*c[:4], c[4]) for c in LAYERS] + [(*c[:4], c[5]) for c in LAYERS if c[5] is not None]
IDS = [c[0] for c in LAYERS] + [f"{c[0]}-unbatched" for c in LAYERS if c[5] is not None]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "fdl_layer", "torch_layer", "kwargs", "shape"), CASES, ids=IDS)
def test_layer_matches_torch(name, fdl_layer, torch_layer, kwargs, shape, dtype):
    g = torch.Generator().manual_seed(0)
    module = torch_layer(**kwargs).to(dtype)
    layer = fdl_layer(**kwargs, **({"dtype": dtype} if "in_channels" in kwargs else {}))
    if "in_channels" in kwargs:
        assert {k: v.shape for k, v in layer.init(fdl.random.key(0)).items()} == {
            k: v.shape for k, v in module.state_dict().items()
        }
    assert state_dict_keys(layer) == set(module.state_dict())
    x = torch.randn(shape, generator=g, dtype=dtype)
    if name.startswith("LPPool"):
        x = x.abs() + 0.1  # fractional powers of negative inputs are NaN in both
    check_layer(layer, module, [x], dtype)
    if kwargs.get("return_indices"):
        got, want = layer.apply({}, x)[1], module(x)[1]
        assert torch.equal(got, want)


def test_conv3d_init_shapes_and_bounds():
    layer = fdl.nn.Conv3d(4, 6, (2, 3, 1), groups=2)
    params = layer.init(fdl.random.key(0))
    torch_shapes = {
        k: v.shape for k, v in torch.nn.Conv3d(4, 6, (2, 3, 1), groups=2).state_dict().items()
    }
    assert {k: v.shape for k, v in params.items()} == torch_shapes
    bound = 1 / (2 * 2 * 3 * 1) ** 0.5  # 1/sqrt(fan_in), fan_in = C_in/groups * kD kH kW
    assert (
        float(params["weight"].abs().max()) <= bound and float(params["bias"].abs().max()) <= bound
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("n", "kwargs", "shape", "output_size"),
    [
        (1, {"kernel_size": 2}, (2, 3, 8), None),
        (1, {"kernel_size": 3, "stride": 2, "padding": 1}, (2, 3, 9), None),
        (1, {"kernel_size": 2}, (3, 9), (9,)),
        (2, {"kernel_size": 2}, (2, 3, 4, 6), None),
        (2, {"kernel_size": 2, "stride": 2}, (2, 3, 5, 7), (2, 3, 5, 7)),
        (3, {"kernel_size": 2}, (2, 3, 4, 4, 6), None),
        (3, {"kernel_size": 2, "padding": 1}, (3, 4, 4, 6), None),
    ],
)
def test_max_unpool_matches_torch(n, kwargs, shape, output_size, dtype):
    pool = getattr(torch.nn, f"MaxPool{n}d")(**kwargs, return_indices=True)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    y, idx = pool(x)
    module = getattr(torch.nn, f"MaxUnpool{n}d")(**kwargs)
    layer = getattr(fdl.nn, f"MaxUnpool{n}d")(**kwargs)
    assert state_dict_keys(layer) == set(module.state_dict())
    yg = y.detach().clone().requires_grad_(True)
    want = module(yg, idx, output_size)
    yf = y.detach().clone().requires_grad_(True)
    got = layer.apply({}, yf, idx, output_size)
    close(got.detach(), want.detach(), dtype)
    cot = torch.rand(want.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    (gw,) = torch.autograd.grad((want * cot).sum(), yg)
    (gg,) = torch.autograd.grad((got * cot).sum(), yf)
    close(gg, gw, dtype)


@pytest.mark.parametrize(("cls", "shape", "size"), [
    (fdl.nn.ConvTranspose1d, (1, 2, 5), (10,)),
    (fdl.nn.ConvTranspose3d, (1, 2, 2, 3, 2), (1, 3, 4, 6, 4)),
])  # fmt: skip
def test_conv_transpose_output_size_matches_torch(cls, shape, size):
    tcls = getattr(torch.nn, cls.__name__)
    module = tcls(2, 3, 3, stride=2, padding=1).double()
    layer = cls(2, 3, 3, stride=2, padding=1)
    params = {k: v.detach() for k, v in module.named_parameters()}
    x = torch.randn(shape, dtype=torch.float64)
    close(layer.apply(params, x, size), module(x, size), torch.float64)
    with pytest.raises(ValueError, match="valid sizes"):
        layer.apply(params, x, tuple(s + 5 for s in size))


# --------------------------------------------------------------------------- fractional max pool

FRACTIONAL = [
    (2, {"kernel_size": 2, "output_size": (4, 5)}, (2, 3, 9, 11)),
    (2, {"kernel_size": (3, 2), "output_ratio": (0.5, 0.6)}, (2, 3, 9, 11)),
    (2, {"kernel_size": 2, "output_size": 3}, (3, 7, 8)),
    (3, {"kernel_size": 2, "output_size": (3, 4, 5)}, (2, 3, 7, 8, 9)),
    (3, {"kernel_size": (2, 3, 2), "output_ratio": (0.5, 0.5, 0.5)}, (3, 6, 8, 8)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("n", "kwargs", "shape"), FRACTIONAL)
def test_fractional_max_pool_matches_torch_given_the_samples(n, kwargs, shape, dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g, dtype=dtype)
    batch = (shape[0], shape[1]) if len(shape) == n + 2 else (1, shape[0])
    key = fdl.random.key(7)
    samples = fdl.random.uniform(key, (*batch, n), dtype=dtype)  # what the layer draws
    module = getattr(torch.nn, f"FractionalMaxPool{n}d")(
        **kwargs, return_indices=True, _random_samples=samples
    )
    layer = getattr(fdl.nn, f"FractionalMaxPool{n}d")(**kwargs, return_indices=True)
    check_layer(layer, module, [x], dtype, apply_kwargs={"key": key})
    assert torch.equal(layer.apply({}, x, key=key)[1], module(x)[1])
    other = layer.apply({}, x, key=fdl.random.key(8))[1]
    assert other.shape == module(x)[1].shape


def test_fractional_max_pool_needs_key_and_one_size():
    with pytest.raises(ValueError, match="key"):
        fdl.nn.FractionalMaxPool2d(2, output_size=2).apply({}, torch.zeros(1, 1, 5, 5))
    with pytest.raises(ValueError, match="exactly one"):
        fdl.nn.FractionalMaxPool2d(2)
