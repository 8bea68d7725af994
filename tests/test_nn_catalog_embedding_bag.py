"""EmbeddingBag against torch.nn.EmbeddingBag: every mode, input layout and keyword.

Registry: (name, constructor kwargs, input builder). Values and gradients with respect to
the table and the per-sample weights (float64 1e-10, float32 1e-5) and state_dict keys.
"""

from __future__ import annotations

import pytest
import torch
from _catalog_parity import check_layer, state_dict_keys

import fdl

V, D = 10, 3


def _2d(g):
    return [torch.randint(0, V, (4, 5), generator=g)]


def _offsets(g):  # bags of sizes 2, 0 (empty), 4, 1
    return [torch.randint(0, V, (7,), generator=g), torch.tensor([0, 2, 2, 6])]


def _last_offset(g):
    return [torch.randint(0, V, (7,), generator=g), torch.tensor([0, 3, 3, 5, 7])]


def _with_padding(g):
    x = torch.randint(1, V, (7,), generator=g)
    x[[0, 3, 4]] = 0  # padding_idx 0; the third bag holds only padding
    return [x, torch.tensor([0, 2, 3, 5])]


CASES = [
    ("sum-2d", {"mode": "sum"}, _2d, False),
    ("mean-2d", {"mode": "mean"}, _2d, False),
    ("max-2d", {"mode": "max"}, _2d, False),
    ("sum-offsets", {"mode": "sum"}, _offsets, False),
    ("mean-offsets", {}, _offsets, False),
    ("max-offsets", {"mode": "max"}, _offsets, False),
    ("sum-weights", {"mode": "sum"}, _offsets, True),
    ("sum-weights-2d", {"mode": "sum"}, _2d, True),
    ("mean-last-offset", {"include_last_offset": True}, _last_offset, False),
    ("max-last-offset", {"mode": "max", "include_last_offset": True}, _last_offset, False),
    ("mean-padding", {"padding_idx": 0}, _with_padding, False),
    ("sum-padding-weights", {"mode": "sum", "padding_idx": 0}, _with_padding, True),
    ("max-padding", {"mode": "max", "padding_idx": 0}, _with_padding, False),
    ("mean-max-norm", {"max_norm": 1.0}, _offsets, False),
    ("sum-max-norm-p1", {"mode": "sum", "max_norm": 1.5, "norm_type": 1.0}, _2d, False),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("name", "kwargs", "build", "weighted"), CASES, ids=[c[0] for c in CASES])
def test_embedding_bag_matches_torch(name, kwargs, build, weighted, dtype):
    g = torch.Generator().manual_seed(0)
    module = torch.nn.EmbeddingBag(V, D, **kwargs, dtype=dtype)
    with torch.no_grad():
        module.weight.copy_(torch.randn(V, D, generator=g, dtype=dtype))
    layer = fdl.nn.EmbeddingBag(V, D, **kwargs, dtype=dtype)
    inputs = build(g)
    if weighted:
        if len(inputs) == 1:
            inputs.append(None)
        inputs.append(torch.rand(inputs[0].shape, generator=g, dtype=dtype) + 0.5)
    assert state_dict_keys(layer) == set(module.state_dict())
    check_layer(layer, module, inputs, dtype)


def test_init_zeroes_padding_row():
    w = fdl.nn.EmbeddingBag(V, D, padding_idx=-1).init(fdl.random.key(0))["weight"]
    assert w.shape == (V, D) and torch.equal(w[-1], torch.zeros(D)) and bool(w[0].abs().sum() > 0)


@pytest.mark.parametrize(
    ("kwargs", "args", "match"),
    [
        ({"mode": "mean"}, (torch.tensor([0, 1]), torch.tensor([0]), torch.ones(2)), "mode='sum'"),
        ({}, (torch.tensor([[0, 1]]), torch.tensor([0])), "offsets must be None"),
        ({}, (torch.tensor([0, 1]),), "offsets"),
    ],
)
def test_bad_arguments(kwargs, args, match):
    layer = fdl.nn.EmbeddingBag(V, D, **kwargs)
    with pytest.raises(ValueError, match=match):
        layer.apply(layer.init(fdl.random.key(0)), *args)
