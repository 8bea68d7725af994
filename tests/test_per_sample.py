"""Per-sample gradients: equal to a loop of single-example torch.func.grad calls."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fdl
from fdl._per_sample import core as _core

# ---------------------------------------------------------------------------
# registry: (name, make_params(dtype), make_batch(dtype, n), loss_fn, expected method under auto)
# ---------------------------------------------------------------------------


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _mlp_params(dtype):
    return {
        "fc1": {
            "weight": _randn(16, 8, dtype=dtype, seed=1),
            "bias": _randn(16, dtype=dtype, seed=2),
        },
        "fc2": {
            "weight": _randn(4, 16, dtype=dtype, seed=3),
            "bias": _randn(4, dtype=dtype, seed=4),
        },
    }


def _mlp_batch(dtype, n):
    return _randn(n, 8, dtype=dtype, seed=5), torch.arange(n) % 4


def _mlp_loss(params, x, y):
    h = torch.tanh(F.linear(x, params["fc1"]["weight"], params["fc1"]["bias"]))
    return F.cross_entropy(F.linear(h, params["fc2"]["weight"], params["fc2"]["bias"]), y)


def _mlp_sum_loss(params, x, y):
    h = torch.relu(F.linear(x, params["fc1"]["weight"], params["fc1"]["bias"]))
    out = F.linear(h, params["fc2"]["weight"], params["fc2"]["bias"])
    target = (y.unsqueeze(1) == torch.arange(4)).to(out.dtype)  # one-hot
    return F.mse_loss(out, target, reduction="sum")


def _cnn_params(dtype):
    return {
        "conv1": {
            "weight": _randn(4, 1, 3, 3, dtype=dtype, seed=1),
            "bias": _randn(4, dtype=dtype, seed=2),
        },
        "conv2": {
            "weight": _randn(6, 2, 3, 3, dtype=dtype, seed=3),
            "bias": _randn(6, dtype=dtype, seed=4),
        },
        "fc": {
            "weight": _randn(3, 6 * 2 * 2, dtype=dtype, seed=5) * 0.1,
            "bias": _randn(3, dtype=dtype, seed=6),
        },
    }


def _cnn_batch(dtype, n):
    return _randn(n, 1, 8, 8, dtype=dtype, seed=7), torch.arange(n) % 3


def _cnn_loss(params, x, y):
    h = F.relu(
        F.conv2d(x, params["conv1"]["weight"], params["conv1"]["bias"], padding=2, dilation=2)
    )
    h = F.max_pool2d(h, 2)  # (B, 4, 4, 4)
    h = F.conv2d(
        h,
        params["conv2"]["weight"],
        params["conv2"]["bias"],
        stride=2,
        padding="valid",
        groups=2,
        dilation=1,
    )  # (B, 6, 1, 1) -> use padding to keep 2x2
    h = F.relu(F.pad(h, (0, 1, 0, 1)))  # (B, 6, 2, 2)
    logits = F.linear(h.flatten(1), params["fc"]["weight"], params["fc"]["bias"])
    return F.nll_loss(F.log_softmax(logits, dim=1), y)


def _seq_params(dtype):
    return {
        "conv": {
            "weight": _randn(5, 3, 3, dtype=dtype, seed=1),
            "bias": _randn(5, dtype=dtype, seed=2),
        },
        "proj": {"weight": _randn(2, 5, dtype=dtype, seed=3)},
    }


def _seq_batch(dtype, n):
    return _randn(n, 3, 7, dtype=dtype, seed=4), _randn(n, 7, 2, dtype=dtype, seed=5)


def _seq_loss(params, x, y):
    h = torch.tanh(
        F.conv1d(x, params["conv"]["weight"], params["conv"]["bias"], padding="same", dilation=1)
    )
    out = F.linear(h.transpose(1, 2), params["proj"]["weight"])  # (B, T, 2): a sequence axis
    return F.mse_loss(out, y)


def _tied_loss(params, x, y):
    # the same weight used twice (shared layer)
    h = torch.tanh(F.linear(x, params["w"]))
    out = F.linear(h, params["w"])
    return F.mse_loss(out, y)


def _tied_params(dtype):
    return {"w": _randn(6, 6, dtype=dtype, seed=1), "unused": _randn(3, dtype=dtype, seed=2)}


def _tied_batch(dtype, n):
    return _randn(n, 6, dtype=dtype, seed=3), _randn(n, 6, dtype=dtype, seed=4)


def _norm_params(dtype):
    return {**_mlp_params(dtype), "ln": {"weight": 1 + 0.1 * _randn(16, dtype=dtype, seed=9)}}


def _norm_loss(params, x, y):
    h = F.linear(x, params["fc1"]["weight"], params["fc1"]["bias"])
    h = F.layer_norm(h, (16,), params["ln"]["weight"])
    return F.cross_entropy(F.linear(h, params["fc2"]["weight"], params["fc2"]["bias"]), y)


def _squared_mean_loss(params, x, y):
    # not a sum or mean of per-example terms
    return _mlp_loss(params, x, y) ** 2


def _coupled_loss(params, x, y):
    # examples coupled through batch centring
    h = torch.tanh(F.linear(x, params["fc1"]["weight"], params["fc1"]["bias"]))
    h = h - h.mean(0, keepdim=True) + 0.1
    return F.cross_entropy(F.linear(h, params["fc2"]["weight"], params["fc2"]["bias"]), y)


def _gram_params(dtype):
    return {
        "conv": {"weight": _randn(8, 8, 3, 3, dtype=dtype, seed=1) * 0.2},
        "fc": {
            "weight": _randn(16, 8, dtype=dtype, seed=2),
            "bias": _randn(16, dtype=dtype, seed=3),
        },
    }


def _gram_batch(dtype, n):
    return _randn(n, 8, 4, 3, dtype=dtype, seed=4), _randn(n, 2, 16, dtype=dtype, seed=5)


def _gram_loss(params, x, y):
    # shapes where the Gram-matrix (ghost) norms are cheaper than materialising
    h = torch.tanh(F.conv2d(x, params["conv"]["weight"]))  # (B, 8, 2, 1)
    out = F.linear(h.flatten(2).transpose(1, 2), params["fc"]["weight"], params["fc"]["bias"])
    return F.mse_loss(out, y)  # out: (B, 2, 16)


MODELS = [
    ("mlp_mean", _mlp_params, _mlp_batch, _mlp_loss, "rules"),
    ("mlp_sum", _mlp_params, _mlp_batch, _mlp_sum_loss, "rules"),
    ("cnn", _cnn_params, _cnn_batch, _cnn_loss, "rules"),
    ("conv1d_sequence", _seq_params, _seq_batch, _seq_loss, "rules"),
    ("gram_norms", _gram_params, _gram_batch, _gram_loss, "rules"),
    ("tied_weight", _tied_params, _tied_batch, _tied_loss, "rules"),
    ("layer_norm", _norm_params, _mlp_batch, _norm_loss, "vmap"),
    ("squared_mean", _mlp_params, _mlp_batch, _squared_mean_loss, "vmap"),
    ("coupled", _mlp_params, _mlp_batch, _coupled_loss, "vmap"),
]
IDS = [m[0] for m in MODELS]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
N = 7


def _loop(loss_fn, params, *batch):
    """The definition: grad of the loss on each example as a batch of one."""
    per = [
        torch.func.grad(loss_fn)(params, *(t[i : i + 1] for t in batch))
        for i in range(batch[0].shape[0])
    ]
    return fdl.tree.stack(per)


def _assert_close(actual, expected, tol):
    fdl.tree.assert_same_structure(actual, expected, names=("actual", "expected"))
    for path, a, e in zip(
        fdl.tree.paths(expected), fdl.tree.leaves(actual), fdl.tree.leaves(expected), strict=True
    ):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol, msg=lambda m, p=path: f"{p}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("method", ["auto", "vmap"])
@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_matches_single_example_loop(model, method, dtype):
    _, make_params, make_batch, loss_fn, _ = model
    params, batch = make_params(dtype), make_batch(dtype, N)
    expected = _loop(loss_fn, params, *batch)
    for chunk in (None, 3):
        got = fdl.per_sample_grads(loss_fn, chunk_size=chunk, method=method)(params, *batch)
        _assert_close(got, expected, TOL[dtype])


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_auto_picks_expected_method(model):
    _, make_params, make_batch, loss_fn, expected = model
    params, batch = make_params(torch.float64), make_batch(torch.float64, N)
    *_, used = _core.decompose(
        loss_fn, params, batch, has_aux=False, chunk_size=None, method="auto", need_loss=False
    )
    assert used == expected


@pytest.mark.parametrize("model", [m for m in MODELS if m[4] == "vmap"], ids=lambda m: m[0])
def test_rules_method_refuses_with_reason(model):
    _, make_params, make_batch, loss_fn, _ = model
    params, batch = make_params(torch.float64), make_batch(torch.float64, N)
    with pytest.raises(ValueError, match="method='rules' does not apply"):
        fdl.per_sample_grads(loss_fn, method="rules")(params, *batch)
    with pytest.raises(ValueError, match="method='rules' does not apply"):
        fdl.per_sample_grad_norms(loss_fn, method="rules")(params, *batch)


@pytest.mark.parametrize("method", ["auto", "vmap"])
@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_norms_match_materialised(model, method):
    _, make_params, make_batch, loss_fn, _ = model
    params, batch = make_params(torch.float64), make_batch(torch.float64, N)
    expected = _loop(loss_fn, params, *batch)
    want = torch.stack([fdl.tree.global_norm(t) for t in fdl.tree.unstack(expected)])
    for chunk in (None, 2):
        got = fdl.per_sample_grad_norms(loss_fn, chunk_size=chunk, method=method)(params, *batch)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["auto", "vmap"])
def test_has_aux(method):
    params, (x, y) = _cnn_params(torch.float64), _cnn_batch(torch.float64, N)

    def loss_aux(p, x, y):
        loss = _cnn_loss(p, x, y)
        return loss, {"loss": loss.detach(), "n": torch.tensor(x.shape[0])}

    expected = _loop(_cnn_loss, params, x, y)
    for chunk in (None, 3):
        grads, aux = fdl.per_sample_grads(loss_aux, has_aux=True, chunk_size=chunk, method=method)(
            params, x, y
        )
        _assert_close(grads, expected, 1e-10)
        torch.testing.assert_close(aux["loss"], _cnn_loss(params, x, y))
        assert int(aux["n"]) == N
        norms, aux2 = fdl.per_sample_grad_norms(loss_aux, has_aux=True, method=method)(params, x, y)
        assert int(aux2["n"]) == N and norms.shape == (N,)


def test_pure_and_grad_mode_independent():
    params, batch = _cnn_params(torch.float64), _cnn_batch(torch.float64, N)
    before = fdl.tree.map(torch.clone, params)
    with torch.no_grad():
        got = fdl.per_sample_grads(_cnn_loss)(params, *batch)
    _assert_close(got, _loop(_cnn_loss, params, *batch), 1e-10)
    _assert_close(params, before, 0.0)
    assert all(not p.requires_grad for p in fdl.tree.leaves(params))


def test_inside_torch_func_transform_uses_vmap():
    params, batch = _mlp_params(torch.float64), _mlp_batch(torch.float64, N)
    # differentiate a function of the per-sample norms: needs the vmap path
    f = lambda p: fdl.per_sample_grad_norms(_mlp_loss)(p, *batch).sum()  # noqa: E731
    g = torch.func.grad(f)(params)
    h = 1e-6
    w = params["fc2"]["bias"]
    e = torch.zeros_like(w)
    e[0] = h
    plus = {**params, "fc2": {**params["fc2"], "bias": w + e}}
    minus = {**params, "fc2": {**params["fc2"], "bias": w - e}}
    fd = (f(plus) - f(minus)) / (2 * h)
    assert math.isclose(float(g["fc2"]["bias"][0]), float(fd), rel_tol=1e-5, abs_tol=1e-8)


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_chunk_size(bad):
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        fdl.per_sample_grads(_mlp_loss, chunk_size=bad)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        fdl.per_sample_grad_norms(_mlp_loss, chunk_size=bad)


def test_bad_inputs():
    params, (x, y) = _mlp_params(torch.float64), _mlp_batch(torch.float64, N)
    with pytest.raises(ValueError, match="method must be one of"):
        fdl.per_sample_grads(_mlp_loss, method="fast")
    with pytest.raises(TypeError, match="chunk_size must be an int"):
        fdl.per_sample_grads(_mlp_loss, chunk_size=2.0)
    with pytest.raises(ValueError, match="disagree on the batch size"):
        fdl.per_sample_grads(_mlp_loss)(params, x, y[:3])
    with pytest.raises(ValueError, match="scalar loss"):
        fdl.per_sample_grads(lambda p, x, y: _mlp_loss(p, x, y).expand(2))(params, x, y)
