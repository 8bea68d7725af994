"""Per-sample rules for the layers beyond linear and convolution: embeddings, LayerNorm and
GroupNorm affines, the projections inside MultiheadAttention and the Transformer layers
(including views of ``in_proj_weight``), and recurrent layers (which mark themselves
``vmap``-only). Every entry: per-sample gradients and norms equal the single-example loop
and the ``vmap`` path, and the path (and each parameter's rule) is the one expected.

Tolerances: float64 1e-10 (a few hundred roundings of 1.1e-16 on O(1) values). float32 is
compared with the float64 loop: each gradient entry is a sum of at most ~10^3 products
through at most ~10 layers of O(1) conditioning; rounding errors of unit 6e-8 accumulate
like sqrt(n) per reduction, about 30 * 6e-8 * 10 ≈ 2e-5 of the largest entry in all. The
tests allow 2e-5 of the largest entry of the reference plus 1e-5 relative per entry; the
cases here reach at most 1.1e-6 (mha_cross_kdim).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import fdl
from fdl._per_sample import core as _core
from fdl.per_sample import per_sample_method

B = 5


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _ints(*shape: int, high: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape, generator=g)


def _random_params(layer: fdl.nn.Layer, dtype: torch.dtype, seed: int) -> Any:
    """The layer's params with every leaf redrawn (norm weights not 1, biases not 0)."""
    params = layer.init(fdl.random.key(seed))
    leaves = fdl.tree.leaves(params)
    new = [0.5 * _randn(*t.shape, dtype=dtype, seed=seed + i) for i, t in enumerate(leaves)]
    return fdl.tree.unflatten(fdl.tree.structure(params), new)


@dataclass
class Case:
    params: Any
    batch: tuple[Any, ...]  # inputs, then the target
    forward: Callable[..., torch.Tensor]  # forward(params, *inputs) -> output
    target_is_class: bool = False

    def loss(self, reduction: str = "mean") -> Callable[..., torch.Tensor]:
        def loss_fn(params: Any, *batch: Any) -> torch.Tensor:
            out = self.forward(params, *batch[:-1])
            if self.target_is_class:
                return F.cross_entropy(out, batch[-1], reduction=reduction)
            return F.mse_loss(torch.tanh(out), batch[-1], reduction=reduction)

        return loss_fn


def _layer_case(layer, inputs, out_shape, dtype, *, call=None) -> Case:
    params = _random_params(layer, dtype, seed=11)
    y = _randn(B, *out_shape, dtype=dtype, seed=99)
    forward = call or (lambda p, *x: layer.apply(p, *x))
    return Case(params, (*inputs, y), forward)


def _embedding(dtype):
    emb = fdl.nn.Embedding(13, 6, padding_idx=0, dtype=dtype)
    x = _ints(B, 5, high=4, seed=1)  # small vocabulary: repeated indices and padding
    return _layer_case(emb, (x,), (5, 6), dtype)


def _embedding_long(dtype):
    # 12 positions, 3 features: the per-row sums (not the Gram form) give the norms
    emb = fdl.nn.Embedding(7, 3, dtype=dtype)
    return _layer_case(emb, (_ints(B, 3, 4, high=7, seed=2),), (3, 4, 3), dtype)


def _linear_seq_gram(dtype):
    lin = fdl.nn.Linear(24, 20, dtype=dtype)  # T = 2: Gram form
    return _layer_case(lin, (_randn(B, 2, 24, dtype=dtype, seed=3),), (2, 20), dtype)


def _linear_seq_direct(dtype):
    lin = fdl.nn.Linear(3, 4, dtype=dtype)  # T = 6: per-example gradients
    return _layer_case(lin, (_randn(B, 6, 3, dtype=dtype, seed=3),), (6, 4), dtype)


def _layer_norm(dtype):
    ln = fdl.nn.LayerNorm(6, dtype=dtype)
    return _layer_case(ln, (_randn(B, 4, 6, dtype=dtype, seed=4),), (4, 6), dtype)


def _layer_norm_2d(dtype):
    ln = fdl.nn.LayerNorm((3, 4), dtype=dtype)
    return _layer_case(ln, (_randn(B, 2, 3, 4, dtype=dtype, seed=4),), (2, 3, 4), dtype)


def _group_norm(dtype):
    gn = fdl.nn.GroupNorm(2, 4, dtype=dtype)
    return _layer_case(gn, (_randn(B, 4, 3, 3, dtype=dtype, seed=5),), (4, 3, 3), dtype)


def _mha_self(dtype):
    mha = fdl.nn.MultiheadAttention(8, 2, batch_first=True, dtype=dtype)
    x = _randn(B, 4, 8, dtype=dtype, seed=6)
    return _layer_case(mha, (x,), (4, 8), dtype, call=lambda p, x: mha.apply(p, x, x, x)[0])


def _mha_cross_kdim(dtype):
    # kdim, vdim != embed_dim: separate q/k/v weights, in_proj_bias split by chunk
    mha = fdl.nn.MultiheadAttention(8, 2, kdim=5, vdim=3, batch_first=True, dtype=dtype)
    q, k, v = (
        _randn(B, n, d, dtype=dtype, seed=s) for n, d, s in ((4, 8, 6), (6, 5, 7), (6, 3, 8))
    )
    return _layer_case(mha, (q, k, v), (4, 8), dtype, call=lambda p, *t: mha.apply(p, *t)[0])


def _mha_cross_views(dtype):
    # query != key is value: W_q = in_proj_weight.chunk(3)[0] and in_proj_weight[E:]
    mha = fdl.nn.MultiheadAttention(8, 2, batch_first=True, dtype=dtype)
    q, kv = _randn(B, 4, 8, dtype=dtype, seed=6), _randn(B, 3, 8, dtype=dtype, seed=7)

    def call(p, q, kv):
        return mha.apply(p, q, kv, kv, need_weights=False)[0]

    return _layer_case(mha, (q, kv), (4, 8), dtype, call=call)


def _encoder_layer(dtype):
    layer = fdl.nn.TransformerEncoderLayer(
        8, 2, dim_feedforward=12, dropout=0.0, batch_first=True, dtype=dtype
    )
    return _layer_case(layer, (_randn(B, 4, 8, dtype=dtype, seed=9),), (4, 8), dtype)


def _encoder_layer_norm_first(dtype):
    layer = fdl.nn.TransformerEncoderLayer(
        8, 2, dim_feedforward=12, dropout=0.0, batch_first=True, norm_first=True, dtype=dtype
    )
    return _layer_case(layer, (_randn(B, 4, 8, dtype=dtype, seed=9),), (4, 8), dtype)


def _lstm(dtype):
    lstm = fdl.nn.LSTM(4, 5, batch_first=True, dtype=dtype)
    x = _randn(B, 3, 4, dtype=dtype, seed=10)
    return _layer_case(lstm, (x,), (3, 5), dtype, call=lambda p, x: lstm.apply(p, x)[0])


def _emb_lstm_linear(dtype):
    emb = fdl.nn.Embedding(11, 6, padding_idx=0, dtype=dtype)
    lstm = fdl.nn.LSTM(6, 5, batch_first=True, dtype=dtype)
    fc = fdl.nn.Linear(5, 3, dtype=dtype)
    params = {
        "emb": _random_params(emb, dtype, 1),
        "lstm": _random_params(lstm, dtype, 2),
        "fc": _random_params(fc, dtype, 3),
    }

    def forward(p, x):
        h, _ = lstm.apply(p["lstm"], emb.apply(p["emb"], x))  # (B, T, 5)
        return fc.apply(p["fc"], h[:, -1])

    x, y = _ints(B, 4, high=11, seed=4), torch.arange(B) % 3
    return Case(params, (x, y), forward, target_is_class=True)


def _emb_transformer_classifier(dtype):
    emb = fdl.nn.Embedding(11, 8, padding_idx=0, dtype=dtype)
    enc = fdl.nn.TransformerEncoder(
        fdl.nn.TransformerEncoderLayer(
            8, 2, dim_feedforward=16, dropout=0.0, batch_first=True, dtype=dtype
        ),
        2,
    )
    fc = fdl.nn.Linear(8, 3, dtype=dtype)
    params = {
        "emb": _random_params(emb, dtype, 1),
        "enc": _random_params(enc, dtype, 2),
        "fc": _random_params(fc, dtype, 3),
    }

    def forward(p, x):
        h = enc.apply(p["enc"], emb.apply(p["emb"], x))  # (B, T, 8)
        return fc.apply(p["fc"], h.mean(1))  # mean-pool over positions

    x, y = _ints(B, 6, high=11, seed=4), torch.arange(B) % 3
    return Case(params, (x, y), forward, target_is_class=True)


# name -> (builder, expected path, {param path: expected rule kinds} checked on the rules path)
CASES: dict[str, tuple[Callable[[torch.dtype], Case], str, dict[str, tuple[str, ...]]]] = {
    "embedding": (_embedding, "rules", {"weight": ("embedding",)}),
    "embedding_long": (_embedding_long, "rules", {"weight": ("embedding",)}),
    "linear_seq_gram": (_linear_seq_gram, "rules", {"weight": ("linear",)}),
    "linear_seq_direct": (_linear_seq_direct, "rules", {"weight": ("linear",)}),
    "layer_norm": (_layer_norm, "rules", {"weight": ("scale",), "bias": ("shift",)}),
    "layer_norm_2d": (_layer_norm_2d, "rules", {"weight": ("scale",), "bias": ("shift",)}),
    "group_norm": (_group_norm, "rules", {"weight": ("scale",), "bias": ("shift",)}),
    "mha_self": (_mha_self, "rules", {"in_proj_weight": ("linear",)}),
    "mha_cross_kdim": (_mha_cross_kdim, "rules", {"k_proj_weight": ("linear",)}),
    "mha_cross_views": (_mha_cross_views, "rules", {"in_proj_bias": ("linear",)}),
    "encoder_layer": (_encoder_layer, "rules", {"norm1.weight": ("scale",)}),
    "encoder_layer_norm_first": (
        _encoder_layer_norm_first,
        "rules",
        {"linear1.weight": ("linear",)},
    ),
    "lstm": (_lstm, "vmap", {}),
    "emb_lstm_linear": (_emb_lstm_linear, "vmap", {}),
    "emb_transformer_classifier": (
        _emb_transformer_classifier,
        "rules",
        {"emb.weight": ("embedding",), "enc.layers.1.self_attn.in_proj_weight": ("linear",)},
    ),
}
NAMES = list(CASES)
F32_TOL = {"rtol": 1e-5, "atol_scale": 2e-5}


def _loop(loss_fn, params, batch):
    """The definition: each example's gradient as a batch of one."""
    per = [torch.func.grad(loss_fn)(params, *(t[i : i + 1] for t in batch)) for i in range(B)]
    return fdl.tree.stack(per)


def _norms(grads):
    return sum(t.flatten(1).square().sum(1) for t in fdl.tree.leaves(grads)).sqrt()


def _close(got, want, dtype):
    if dtype == torch.float64:
        fdl.testing.assert_trees_close(got, want, rtol=1e-10, atol=1e-10)
        return
    for a, e in zip(fdl.tree.leaves(got), fdl.tree.leaves(want), strict=True):
        atol = F32_TOL["atol_scale"] * float(e.abs().max()) + 1e-12
        torch.testing.assert_close(a.double(), e.double(), rtol=F32_TOL["rtol"], atol=atol)


@pytest.fixture(scope="module", params=NAMES)
def case64(request):
    name = request.param
    case = CASES[name][0](torch.float64)
    loss = case.loss()
    return name, case, loss, _loop(loss, case.params, case.batch)


@pytest.mark.parametrize("method", ["auto", "vmap"])
def test_grads_equal_single_example_loop(case64, method):
    _, case, loss, ref = case64
    for chunk in (None, 2):
        got = fdl.per_sample_grads(loss, method=method, chunk_size=chunk)(case.params, *case.batch)
        _close(got, ref, torch.float64)


@pytest.mark.parametrize("method", ["auto", "vmap"])
def test_norms_equal_norms_of_single_example_grads(case64, method):
    _, case, loss, ref = case64
    for chunk in (None, 3):
        got = fdl.per_sample_grad_norms(loss, method=method, chunk_size=chunk)(
            case.params, *case.batch
        )
        _close(got, _norms(ref), torch.float64)


def test_weighted_sum_equals_weighted_loop(case64):
    # the clipped sum DP-SGD forms: sum_i w[i] grad_i, without materialising grad_i
    _, case, loss, ref = case64
    w = torch.linspace(0.2, 1.4, B, dtype=torch.float64)
    *_, rep, _ = _core.decompose(
        loss, case.params, case.batch, has_aux=False, chunk_size=None, method="auto",
        need_loss=False,
    )  # fmt: skip
    got = fdl.tree.unflatten(fdl.tree.structure(case.params), rep.weighted_sum(w))
    want = fdl.tree.map(lambda t: torch.tensordot(w, t, dims=1), ref)
    _close(got, want, torch.float64)


def test_path_and_rules_are_the_expected_ones(case64):
    name, case, loss, _ = case64
    _, method, kinds = CASES[name]
    plan = per_sample_method(loss)(case.params, *case.batch)
    assert plan.method == method, plan.reason
    if method == "rules":
        assert plan.reason is None
        assert all(plan.rules.values()), f"leaves without a rule: {plan.rules}"
        for path, want in kinds.items():
            assert plan.rules[path] == want, (path, plan.rules[path])
    else:
        assert plan.rules == {} and "LSTM" in plan.reason
        with pytest.raises(ValueError, match="LSTM is marked as computed by vmap"):
            fdl.per_sample_grads(loss, method="rules")(case.params, *case.batch)


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_float64_loop(name):
    case64, case32 = CASES[name][0](torch.float64), CASES[name][0](torch.float32)
    ref = _loop(case64.loss(), case64.params, case64.batch)
    got = fdl.per_sample_grads(case32.loss())(case32.params, *case32.batch)
    _close(got, ref, torch.float32)
    norms = fdl.per_sample_grad_norms(case32.loss())(case32.params, *case32.batch)
    _close(norms, _norms(ref), torch.float32)


def test_sequence_first_input_falls_back_with_reason():
    # a linear layer over (T, B, d): the batch axis is not leading, so no rule applies
    params = {"w": _randn(3, 4, dtype=torch.float64, seed=1)}
    x, y = _randn(6, B, 4, dtype=torch.float64, seed=2), _randn(B, 3, dtype=torch.float64, seed=3)

    def loss(p, x, y):  # x: (B, T, 4) as given; the model runs sequence-first inside
        h = F.linear(x.transpose(0, 1), p["w"])  # (T, B, 3)
        return F.mse_loss(torch.tanh(h).mean(0), y)

    xb = x.transpose(0, 1).contiguous()  # (B, T, 4)
    plan = per_sample_method(loss)(params, xb, y)
    assert plan.method == "vmap" and "does not lead with the batch axis" in plan.reason
    _close(fdl.per_sample_grads(loss)(params, xb, y), _loop(loss, params, (xb, y)), torch.float64)
