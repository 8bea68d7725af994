"""Parity of fdl.losses.linear_cross_entropy and fdl.nn.LinearCrossEntropyLoss with torch's.

Every config runs unchunked and chunked (uneven chunks of a 7-row batch), in float64 (1e-10)
and float32 (1e-5), comparing the value and the gradients w.r.t. input, weight and bias with
torch's reference path (``options=None``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fdl

N, IN, C = 7, 5, 4

# id -> kwargs: bias, K-dim out_features, target kind, class weight, loss keywords, unbatched
CONFIGS = {
    "mean": {},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none"},
    "bias": {"bias": True},
    "weight": {"class_weight": True},
    "weight_sum_bias": {"class_weight": True, "bias": True, "reduction": "sum"},
    "ignore_index": {"ignore_index": 1},
    "ignore_default": {"ignore_default": True},
    "ignore_weight_none": {"ignore_index": 2, "class_weight": True, "reduction": "none"},
    "smooth": {"label_smoothing": 0.2},
    "smooth_weight_ignore": {"label_smoothing": 0.3, "class_weight": True, "ignore_index": 0},
    "smooth_none": {"label_smoothing": 0.1, "reduction": "none", "bias": True},
    "prob": {"prob": True},
    "prob_weight_smooth_sum": {
        "prob": True,
        "class_weight": True,
        "label_smoothing": 0.2,
        "reduction": "sum",
    },
    "prob_none_bias": {"prob": True, "reduction": "none", "bias": True},
    "kdim": {"out_features": (3,), "bias": True},
    "kdim_2_smooth_weight": {"out_features": (2, 3), "label_smoothing": 0.1, "class_weight": True},
    "kdim_prob_none": {"out_features": (3,), "prob": True, "reduction": "none"},
    "unbatched": {"unbatched": True, "bias": True},
    "unbatched_prob_smooth": {"unbatched": True, "prob": True, "label_smoothing": 0.2},
}

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _case(cfg: dict, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = cfg.get("out_features", ())
    shape_n = () if cfg.get("unbatched") else (N,)
    x = torch.randn(*shape_n, IN, generator=g, dtype=dtype)
    w = torch.randn(C, *d, IN, generator=g, dtype=dtype)
    b = torch.randn(C, *d, generator=g, dtype=dtype) if cfg.get("bias") else None
    if cfg.get("prob"):
        t = torch.randn(*shape_n, C, *d, generator=g, dtype=dtype).softmax(len(shape_n))
    else:
        t = torch.randint(0, C, (*shape_n, *d), generator=g)
        if cfg.get("ignore_default"):
            t.view(-1)[::3] = -100
        if "ignore_index" in cfg:
            t.view(-1)[::2] = cfg["ignore_index"]
    kw = {k: cfg[k] for k in ("reduction", "ignore_index", "label_smoothing") if k in cfg}
    if cfg.get("class_weight"):
        kw["weight"] = torch.rand(C, generator=g, dtype=dtype) + 0.5
    return x, w, b, t, kw


def _value_and_grads(fn, x, w, b):
    leaves = [v.clone().requires_grad_(True) for v in (x, w, b) if v is not None]
    xi, wi, bi = leaves[0], leaves[1], leaves[2] if b is not None else None
    out = fn(xi, wi, bi)
    grads = torch.autograd.grad(
        (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)).sum(),
        leaves,
    )
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("chunk_size", [None, 3, 1], ids=["full", "chunk3", "chunk1"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_torch(name, chunk_size, dtype):
    x, w, b, t, kw = _case(CONFIGS[name], dtype)
    got, got_g = _value_and_grads(
        lambda xi, wi, bi: fdl.losses.linear_cross_entropy(
            xi, wi, t, linear_bias=bi, chunk_size=chunk_size, **kw
        ),
        x,
        w,
        b,
    )
    want, want_g = _value_and_grads(
        lambda xi, wi, bi: F.linear_cross_entropy(xi, wi, t, linear_bias=bi, **kw), x, w, b
    )
    tol = TOL[dtype]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    for a, e in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


def test_all_ignored_mean_is_nan_like_torch():
    x, w, _, _, _ = _case({}, torch.float64)
    t = torch.full((N,), -100)
    for cs in (None, 2):
        got = fdl.losses.linear_cross_entropy(x, w, t, chunk_size=cs)
        assert torch.isnan(got) and torch.isnan(F.linear_cross_entropy(x, w, t))


def _max_saved_numel(chunk_size, classes=50):
    """The largest tensor autograd saves for the backward pass (logits: N * classes)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, IN, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(classes, IN, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, classes, (N,), generator=g)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda s: sizes.append(s.numel()) or s, lambda s: s
    ):
        fdl.losses.linear_cross_entropy(x, w, t, chunk_size=chunk_size, label_smoothing=0.1)
    return max(sizes)


def test_chunking_never_saves_the_full_logits():
    assert _max_saved_numel(None) >= N * 50  # the test sees the full logits ...
    assert _max_saved_numel(2) < N * 50  # ... and chunking keeps them out of the graph


def test_chunked_works_under_torch_func_grad():
    x, w, b, t, kw = _case({"bias": True, "class_weight": True}, torch.float64)
    want = torch.func.grad(lambda w: F.linear_cross_entropy(x, w, t, linear_bias=b, **kw))(w)
    got = torch.func.grad(
        lambda w: fdl.losses.linear_cross_entropy(x, w, t, linear_bias=b, chunk_size=3, **kw)
    )(w)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_chunked_per_example_gradients_under_vmap_of_grad():
    g = torch.Generator().manual_seed(2)
    xs = torch.randn(3, N, IN, generator=g, dtype=torch.float64)
    w = torch.randn(C, IN, generator=g, dtype=torch.float64)
    ts = torch.randint(0, C, (3, N), generator=g)

    def per_example(loss):
        return torch.func.vmap(lambda xi, ti: torch.func.grad(lambda w: loss(xi, w, ti))(w))

    got = per_example(
        lambda x, w, t: fdl.losses.linear_cross_entropy(x, w, t, chunk_size=3, label_smoothing=0.2)
    )(xs, ts)
    want = per_example(lambda x, w, t: F.linear_cross_entropy(x, w, t, label_smoothing=0.2))(xs, ts)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_chunked_refuses_target_and_weight_gradients():
    x, w, _, t, _ = _case({"prob": True}, torch.float64)
    with pytest.raises(ValueError, match="no gradient for target"):
        fdl.losses.linear_cross_entropy(x, w, t.requires_grad_(True), chunk_size=2)
    x, w, _, t, _ = _case({}, torch.float64)
    cw = torch.ones(C, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="no gradient for weight"):
        fdl.losses.linear_cross_entropy(x, w, t, weight=cw, chunk_size=2)


def test_chunked_second_order_gradient_equals_unchunked():
    x, w, b, t, kw = _case({"bias": True, "label_smoothing": 0.2}, torch.float64)
    hvps = []
    for cs in (None, 3):
        xi = x.clone().requires_grad_(True)
        loss = fdl.losses.linear_cross_entropy(xi, w, t, linear_bias=b, chunk_size=cs, **kw)
        (gx,) = torch.autograd.grad(loss, xi, create_graph=True)
        hvps.append(torch.autograd.grad((gx * gx).sum(), xi)[0])
    torch.testing.assert_close(hvps[0], hvps[1], rtol=1e-10, atol=1e-10)


# (description, args, kwargs): torch raises RuntimeError, fdl ValueError
_BAD = [
    ("scalar input", (torch.zeros(()), torch.zeros(C, IN), torch.tensor(0)), {}),
    ("3-d input", (torch.zeros(2, 2, IN), torch.zeros(C, IN), torch.zeros(2, 2).long()), {}),
    ("1-d weight", (torch.zeros(N, IN), torch.zeros(IN), torch.zeros(N).long()), {}),
    ("in_features", (torch.zeros(N, IN), torch.zeros(C, IN + 1), torch.zeros(N).long()), {}),
    (
        "bias shape",
        (torch.zeros(N, IN), torch.zeros(C, IN), torch.zeros(N).long()),
        {"linear_bias": torch.zeros(C + 1)},
    ),
    ("kdim unbatched", (torch.zeros(IN), torch.zeros(C, 2, IN), torch.zeros(2).long()), {}),
    (
        "ignore_index with probabilities",
        (torch.zeros(N, IN), torch.zeros(C, IN), torch.zeros(N, C)),
        {"ignore_index": 1},
    ),
]


@pytest.mark.parametrize("args,kwargs", [b[1:] for b in _BAD], ids=[b[0] for b in _BAD])
def test_validation_errors_where_torch_raises(args, kwargs):
    with pytest.raises(RuntimeError):
        F.linear_cross_entropy(*args, **kwargs)
    with pytest.raises(ValueError):
        fdl.losses.linear_cross_entropy(*args, **kwargs)


@pytest.mark.parametrize("chunk_size", [0, -1, 1.5, True])
def test_bad_chunk_size(chunk_size):
    x, w, _, t, _ = _case({}, torch.float64)
    with pytest.raises(ValueError, match="chunk_size"):
        fdl.losses.linear_cross_entropy(x, w, t, chunk_size=chunk_size)


# ---------------------------------------------------------------- the layer

LAYERS = {
    "plain": {},
    "bias_smooth": {"bias": True, "label_smoothing": 0.1, "reduction": "sum"},
    "kdim_bias_ignore": {"bias": True, "out_features": (3,), "ignore_index": 1},
    "chunked_none": {"bias": True, "reduction": "none", "chunk_size": 2},
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_torch_module(name):
    kw = dict(LAYERS[name])
    chunk_size = kw.pop("chunk_size", None)
    torch.manual_seed(0)
    ref = torch.nn.LinearCrossEntropyLoss(IN, C, dtype=torch.float64, **kw)
    layer = fdl.nn.LinearCrossEntropyLoss(IN, C, dtype=torch.float64, chunk_size=chunk_size, **kw)
    params = layer.init(fdl.random.key(0))
    # same state_dict keys and shapes as torch's (torch's has no class-weight buffer here)
    assert {k: v.shape for k, v in fdl.nn.state_dict(params).items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    params = fdl.nn.load_state_dict(ref.state_dict())
    d = kw.get("out_features", ())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, IN, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, C, (N, *d), generator=g)
    got = layer.apply(params, x, t)
    want = ref(x, t)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    lin = {k: v.clone().requires_grad_(True) for k, v in params["linear"].items()}
    got = layer.apply({"linear": lin}, x, t)
    names = [k for k, _ in ref.linear.named_parameters()]
    grads = torch.autograd.grad(got.sum(), [x, *(lin[k] for k in names)])
    want_g = torch.autograd.grad(ref(x, t).sum(), [x, *ref.linear.parameters()])
    for a, e in zip(grads, want_g, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_layer_class_weight_is_torch_weight_buffer():
    cw = torch.rand(C, dtype=torch.float64) + 0.5
    ref = torch.nn.LinearCrossEntropyLoss(IN, C, dtype=torch.float64, weight=cw)
    layer = fdl.nn.LinearCrossEntropyLoss(IN, C, dtype=torch.float64)
    params = {"linear": {"weight": ref.linear.weight.detach().clone()}}
    x, t = torch.randn(N, IN, dtype=torch.float64), torch.randint(0, C, (N,))
    torch.testing.assert_close(
        layer.apply(params, x, t, weight=cw), ref(x, t), rtol=1e-10, atol=1e-10
    )


def test_layer_init_is_torch_linear_distribution():
    layer = fdl.nn.LinearCrossEntropyLoss(16, 50, out_features=(2,), bias=True)
    p = layer.init(fdl.random.key(3))["linear"]
    bound = 1 / math.sqrt(16)
    assert p["weight"].shape == (100, 16) and p["bias"].shape == (100,)
    for v in p.values():
        assert v.abs().max() <= bound and v.abs().max() > 0.9 * bound
