"""Rearrangement, resampling, distance and keyed-dropout layers against torch.nn.

Registry: (name, fdl layer, torch layer, constructor kwargs, input shapes). Values and
gradients (float64 1e-10, float32 1e-5), batched and unbatched where torch takes both, and
state_dict keys (none of these layers has parameters).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _catalog_parity import check_fn, check_layer, close, state_dict_keys

import fdl
import fdl.nn.functional as FF

# (name, fdl layer, torch layer, kwargs, batched input shapes, unbatched input shapes or None)
LAYERS = [
    ("PixelShuffle", fdl.nn.PixelShuffle, torch.nn.PixelShuffle, {"upscale_factor": 2},
     [(2, 8, 3, 4)], [(8, 3, 4)]),
    ("PixelShuffle3", fdl.nn.PixelShuffle, torch.nn.PixelShuffle, {"upscale_factor": 3},
     [(2, 2, 9, 2, 3)], None),
    ("PixelUnshuffle", fdl.nn.PixelUnshuffle, torch.nn.PixelUnshuffle, {"downscale_factor": 2},
     [(2, 3, 4, 6)], [(3, 4, 6)]),
    ("ChannelShuffle", fdl.nn.ChannelShuffle, torch.nn.ChannelShuffle, {"groups": 3},
     [(2, 6, 4, 5)], None),
    ("ChannelShuffle1d", fdl.nn.ChannelShuffle, torch.nn.ChannelShuffle, {"groups": 2},
     [(2, 6, 5)], None),
    ("Upsample-nearest", fdl.nn.Upsample, torch.nn.Upsample, {"scale_factor": 2},
     [(2, 3, 4, 5)], None),
    ("Upsample-nearest-size", fdl.nn.Upsample, torch.nn.Upsample, {"size": (7, 3)},
     [(2, 3, 4, 5)], None),
    ("Upsample-linear", fdl.nn.Upsample, torch.nn.Upsample,
     {"scale_factor": 1.5, "mode": "linear"}, [(2, 3, 6)], None),
    ("Upsample-linear-ac", fdl.nn.Upsample, torch.nn.Upsample,
     {"size": 9, "mode": "linear", "align_corners": True}, [(2, 3, 6)], None),
    ("Upsample-bilinear", fdl.nn.Upsample, torch.nn.Upsample,
     {"scale_factor": (2, 3), "mode": "bilinear"}, [(2, 3, 4, 5)], None),
    ("Upsample-bilinear-ac", fdl.nn.Upsample, torch.nn.Upsample,
     {"scale_factor": 2, "mode": "bilinear", "align_corners": True}, [(2, 3, 4, 5)], None),
    ("Upsample-bicubic", fdl.nn.Upsample, torch.nn.Upsample,
     {"size": (6, 7), "mode": "bicubic"}, [(2, 3, 4, 5)], None),
    ("Upsample-bicubic-ac", fdl.nn.Upsample, torch.nn.Upsample,
     {"scale_factor": 2, "mode": "bicubic", "align_corners": True}, [(1, 2, 4, 5)], None),
    ("Upsample-trilinear", fdl.nn.Upsample, torch.nn.Upsample,
     {"scale_factor": 2, "mode": "trilinear"}, [(1, 2, 3, 4, 5)], None),
    ("Upsample-trilinear-recompute", fdl.nn.Upsample, torch.nn.Upsample,
     {"scale_factor": 1.7, "mode": "trilinear", "recompute_scale_factor": True},
     [(1, 2, 3, 4, 5)], None),
    ("UpsamplingNearest2d", fdl.nn.UpsamplingNearest2d, torch.nn.UpsamplingNearest2d,
     {"scale_factor": 2}, [(2, 3, 4, 5)], None),
    ("UpsamplingBilinear2d", fdl.nn.UpsamplingBilinear2d, torch.nn.UpsamplingBilinear2d,
     {"size": (7, 9)}, [(2, 3, 4, 5)], None),
    ("CosineSimilarity", fdl.nn.CosineSimilarity, torch.nn.CosineSimilarity, {},
     [(4, 5), (4, 5)], None),
    ("CosineSimilarity-dim0", fdl.nn.CosineSimilarity, torch.nn.CosineSimilarity, {"dim": 0},
     [(4, 5), (4, 5)], [(5,), (5,)]),
    ("CosineSimilarity-dim", fdl.nn.CosineSimilarity, torch.nn.CosineSimilarity,
     {"dim": -1, "eps": 1e-3}, [(3, 4, 5), (1, 4, 5)], None),
    ("PairwiseDistance", fdl.nn.PairwiseDistance, torch.nn.PairwiseDistance, {},
     [(4, 5), (4, 5)], [(5,), (5,)]),
    ("PairwiseDistance-p1-keepdim", fdl.nn.PairwiseDistance, torch.nn.PairwiseDistance,
     {"p": 1.0, "keepdim": True}, [(4, 5), (4, 5)], [(5,), (5,)]),
    ("PairwiseDistance-p3-eps", fdl.nn.PairwiseDistance, torch.nn.PairwiseDistance,
     {"p": 3.0, "eps": 0.1}, [(4, 5), (1, 5)], None),
    ("PairwiseDistance-inf", fdl.nn.PairwiseDistance, torch.nn.PairwiseDistance,
     {"p": math.inf}, [(4, 5), (4, 5)], None),
    ("Dropout1d-eval", fdl.nn.Dropout1d, torch.nn.Dropout1d, {"p": 0.3}, [(2, 3, 4)], [(3, 4)]),
    ("Dropout2d-eval", fdl.nn.Dropout2d, torch.nn.Dropout2d, {}, [(2, 3, 4, 5)], None),
    ("Dropout3d-eval", fdl.nn.Dropout3d, torch.nn.Dropout3d, {}, [(2, 3, 2, 4, 5)], [(3, 2, 4, 5)]),
    ("AlphaDropout-eval", fdl.nn.AlphaDropout, torch.nn.AlphaDropout, {}, [(2, 3)], [(3,)]),
    ("FeatureAlphaDropout-eval", fdl.nn.FeatureAlphaDropout, torch.nn.FeatureAlphaDropout, {},
     [(2, 3, 4)], None),
]  # fmt: skip

CASES = [(*c[:5], c[4]) for c in LAYERS] + [(*c[:5], c[5]) for c in LAYERS if c[5] is not None]
IDS = [c[0] for c in LAYERS] + [f"{c[0]}-unbatched" for c in LAYERS if c[5] is not None]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("name", "fdl_layer", "torch_layer", "kwargs", "_", "shapes"), CASES, ids=IDS
)
def test_layer_matches_torch(name, fdl_layer, torch_layer, kwargs, _, shapes, dtype):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    layer, module = fdl_layer(**kwargs), torch_layer(**kwargs).eval()
    assert state_dict_keys(layer) == set(module.state_dict()) == set()
    check_layer(layer, module, xs, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("fdl_fn", "torch_fn", "shapes", "kwargs"),
    [
        (FF.pixel_shuffle, F.pixel_shuffle, [(2, 12, 2, 3)], {"upscale_factor": 2}),
        (FF.pixel_unshuffle, F.pixel_unshuffle, [(2, 3, 6, 9)], {"downscale_factor": 3}),
        (FF.channel_shuffle, F.channel_shuffle, [(2, 8, 3)], {"groups": 4}),
        (FF.cosine_similarity, F.cosine_similarity, [(3, 4), (3, 4)], {"dim": 0}),
        (FF.pairwise_distance, F.pairwise_distance, [(3, 4), (3, 4)], {"p": 0.5}),
        (FF.interpolate, F.interpolate, [(1, 2, 5)], {"size": 3, "mode": "area"}),
        (FF.interpolate, F.interpolate, [(1, 2, 5, 5)], {"size": 8, "mode": "nearest-exact"}),
        (
            FF.interpolate,
            F.interpolate,
            [(1, 2, 8, 8)],
            {"size": 3, "mode": "bilinear", "antialias": True},
        ),
    ],
)
def test_function_matches_torch(fdl_fn, torch_fn, shapes, kwargs, dtype):
    g = torch.Generator().manual_seed(1)
    check_fn(
        fdl_fn, torch_fn, [torch.randn(s, generator=g, dtype=dtype) for s in shapes], kwargs, dtype
    )


def test_pixel_unshuffle_inverts_pixel_shuffle():
    x = torch.randn(2, 3, 8, 8 * 4)
    assert torch.equal(FF.pixel_shuffle(FF.pixel_unshuffle(x, 4), 4), x)


def test_cosine_similarity_zero_vector_gradient_like_torch():
    x1 = torch.zeros(2, 3, dtype=torch.float64)
    x2 = torch.randn(2, 3, dtype=torch.float64)
    check_fn(FF.cosine_similarity, F.cosine_similarity, [x1, x2], {}, torch.float64)


# --------------------------------------------------------------------------- keyed dropout

CHANNEL_DROPOUT = [
    (fdl.nn.Dropout1d, (4, 64, 5), (64, 5), 1),
    (fdl.nn.Dropout2d, (4, 64, 3, 2), (64, 3, 2), 2),
    (fdl.nn.Dropout3d, (4, 64, 2, 2, 2), (64, 2, 2, 2), 3),
]


@pytest.mark.parametrize("p", [0.2, 0.6])
@pytest.mark.parametrize(("cls", "shape", "unbatched", "spatial"), CHANNEL_DROPOUT)
def test_channel_dropout_drops_whole_channels(cls, shape, unbatched, spatial, p):
    layer = cls(p)
    for s in (shape, unbatched):
        x = torch.rand(s, dtype=torch.float64) + 0.5
        y = layer.apply({}, x, key=fdl.random.key(0), train=True)
        assert torch.equal(y, layer.apply({}, x, key=fdl.random.key(0), train=True))
        ratio = (y / x).flatten(-spatial)  # (..., C, spatial)
        kept = ratio[..., 0]
        assert torch.allclose(ratio, kept[..., None].expand_as(ratio))  # one draw per channel
        assert set(kept.unique().tolist()) <= {0.0, 1.0 / (1.0 - p)} or torch.allclose(
            kept[kept != 0], torch.full_like(kept[kept != 0], 1.0 / (1.0 - p))
        )
        keep_rate = float((kept != 0).double().mean())
        assert abs(keep_rate - (1 - p)) < 4 * math.sqrt(p * (1 - p) / kept.numel()) + 1e-9
    # the gradient is the same mask
    x = torch.rand(shape, dtype=torch.float64).requires_grad_(True)
    y = layer.apply({}, x, key=fdl.random.key(1), train=True)
    (g,) = torch.autograd.grad(y.sum(), x)
    close(g, (y / x).detach(), torch.float64)


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize(
    ("cls", "shape", "per_channel"),
    [(fdl.nn.AlphaDropout, (200000,), False), (fdl.nn.FeatureAlphaDropout, (2000, 100, 1), True)],
)
def test_alpha_dropout_keeps_mean_and_variance(cls, shape, per_channel, p):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = cls(p).apply({}, x, key=fdl.random.key(0), train=True)
    # torch's formula: a = 1/sqrt((alpha^2 p + 1)(1 - p)); dropped -> a * alpha * (p - 1)
    alpha = 1.7580993408473766
    a = 1.0 / math.sqrt((alpha**2 * p + 1) * (1 - p))
    dropped_value = a * alpha * (p - 1)
    dropped = torch.isclose(y, torch.full_like(y, dropped_value), rtol=0, atol=1e-12)
    kept = ~dropped
    close(y[kept], a * x[kept] + a * alpha * p, torch.float64)
    assert abs(float(dropped.double().mean()) - p) < 0.01
    if per_channel:
        assert torch.equal(dropped, dropped[:, :, :1].expand_as(dropped))
    # and torch's own layer, in training mode, has the same statistics
    t = torch.nn.AlphaDropout(p) if not per_channel else torch.nn.FeatureAlphaDropout(p)
    yt = t.train()(x)
    assert abs(float(y.mean() - yt.mean())) < 0.02 and abs(float(y.std() - yt.std())) < 0.02
    assert abs(float(y.mean())) < 0.02 and abs(float(y.std()) - 1) < 0.02


KEYED = [fdl.nn.Dropout1d, fdl.nn.Dropout2d, fdl.nn.Dropout3d]
KEYED += [fdl.nn.AlphaDropout, fdl.nn.FeatureAlphaDropout]


@pytest.mark.parametrize("cls", KEYED)
def test_keyed_dropout_needs_key_and_valid_p(cls):
    x = torch.zeros((2, 3, 2, 2, 2)[: {fdl.nn.Dropout1d: 3, fdl.nn.Dropout2d: 4}.get(cls, 5)])
    with pytest.raises(ValueError, match="key"):
        cls(0.5).apply({}, x, train=True)
    with pytest.raises(ValueError, match="between 0 and 1"):
        cls(1.5)
    assert torch.equal(cls(1.0).apply({}, x + 1, train=True), x)  # p = 1: all dropped


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("fdl_fn", "torch_fn", "shapes", "kwargs"),
    [
        (FF.pdist, F.pdist, [(5, 3)], {}),
        (FF.pdist, F.pdist, [(4, 3)], {"p": 1.0}),
        (FF.pdist, F.pdist, [(4, 3)], {"p": 3.0}),
        (FF.normalize, F.normalize, [(4, 3)], {}),
        (FF.normalize, F.normalize, [(4, 3, 2)], {"p": 1.0, "dim": -1, "eps": 0.5}),
        (FF.conv3d, F.conv3d, [(1, 2, 3, 4, 4), (4, 2, 2, 2, 2)], {"stride": 2, "padding": 1}),
        (FF.conv_transpose1d, F.conv_transpose1d, [(1, 2, 5), (2, 3, 3)], {"stride": 2}),
        (FF.conv_transpose3d, F.conv_transpose3d, [(1, 2, 2, 3, 2), (2, 3, 2, 2, 2)], {}),
    ],
)
def test_norm_and_conv_functions_match_torch(fdl_fn, torch_fn, shapes, kwargs, dtype):
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    check_fn(fdl_fn, torch_fn, xs, kwargs, dtype)


def test_pdist_repeated_rows_zero_gradient_like_torch():
    x = torch.randn(3, 4, dtype=torch.float64)
    x = torch.cat([x, x[:1]])  # a zero distance
    check_fn(FF.pdist, F.pdist, [x], {}, torch.float64)


@pytest.mark.parametrize("num_classes", [-1, 7])
def test_one_hot_matches_torch(num_classes):
    t = torch.tensor([[0, 3], [5, 1]])
    assert torch.equal(FF.one_hot(t, num_classes), F.one_hot(t, num_classes))


@pytest.mark.filterwarnings("ignore:Since version 1.3.0, affine_grid")  # torch's, unit sizes
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("size", [(2, 3, 4, 5), (2, 1, 3, 4, 2), (2, 3, 1, 1)])
def test_affine_grid_matches_torch(size, align_corners, dtype):
    k = len(size) - 2
    theta = torch.randn(2, k, k + 1, generator=torch.Generator().manual_seed(4), dtype=dtype)
    check_fn(
        lambda t: FF.affine_grid(t, size, align_corners),
        lambda t: F.affine_grid(t, size, align_corners),
        [theta],
        {},
        dtype,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"align_corners": False},
        {"mode": "nearest", "padding_mode": "border", "align_corners": False},
        {"mode": "bicubic", "padding_mode": "reflection", "align_corners": True},
    ],
)
def test_grid_sample_matches_torch(kwargs, dtype):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=dtype)
    grid = torch.rand(2, 3, 6, 2, generator=g, dtype=dtype) * 2.2 - 1.1
    check_fn(FF.grid_sample, F.grid_sample, [x, grid], kwargs, dtype)
