"""The per-sample rules give each example's own gradient (and its norm) for the layer
options where a rule's bookkeeping differs from the plain case: 'same' padding with dilation
(the padding the rule replays depends on the dilation), short sequences through wide linear
layers (where the norms come from Gram matrices), a linear layer without a sequence axis
(where the norm factorises), an embedding with a negative ``padding_idx`` (normalised to a
row) and a norm affine broadcast through a reshaped view. Reference: a loop of
single-example ``torch.func.grad`` calls. One registry; every property runs on every entry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fdl
from fdl.testing import assert_trees_close


def _randn(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _conv1d_same(dtype):
    params = {"w": _randn(4, 2, 3, dtype=dtype, seed=1), "b": _randn(4, dtype=dtype, seed=2)}
    batch = (_randn(3, 2, 11, dtype=dtype, seed=3), _randn(3, 4, 11, dtype=dtype, seed=4))

    def loss(p, x, y):
        h = F.conv1d(x, p["w"], p["b"], padding="same", dilation=2)
        return F.mse_loss(torch.tanh(h), y)

    return params, batch, loss


def _conv2d_same(dtype):
    params = {"w": _randn(3, 2, 3, 3, dtype=dtype, seed=1), "b": _randn(3, dtype=dtype, seed=2)}
    batch = (_randn(3, 2, 8, 9, dtype=dtype, seed=3), _randn(3, 3, 8, 9, dtype=dtype, seed=4))

    def loss(p, x, y):
        h = F.conv2d(x, p["w"], p["b"], padding="same", dilation=(2, 3))
        return F.mse_loss(torch.tanh(h), y)

    return params, batch, loss


def _wide_short_sequence(dtype):
    # T = 2 steps through 24 -> 20 features: the Gram form (T^2 (in + out) < T in out) applies
    params = {"w": _randn(20, 24, dtype=dtype, seed=1), "b": _randn(20, dtype=dtype, seed=2)}
    batch = (_randn(4, 2, 24, dtype=dtype, seed=3), _randn(4, 2, 20, dtype=dtype, seed=4))

    def loss(p, x, y):
        return F.mse_loss(torch.tanh(F.linear(x, p["w"], p["b"])), y)

    return params, batch, loss


def _linear_no_sequence(dtype):
    # no sequence axis: the norm factorises, ||g a^T||^2 = ||g||^2 ||a||^2
    params = {"w": _randn(5, 7, dtype=dtype, seed=1), "b": _randn(5, dtype=dtype, seed=2)}
    batch = (_randn(4, 7, dtype=dtype, seed=3), _randn(4, 5, dtype=dtype, seed=4))

    def loss(p, x, y):
        return F.mse_loss(torch.tanh(F.linear(x, p["w"], p["b"])), y)

    return params, batch, loss


def _embedding_padding(dtype):
    # repeated indices and a negative padding_idx (the rule normalises it to the last row)
    params = {"w": _randn(6, 4, dtype=dtype, seed=1)}
    g = torch.Generator().manual_seed(2)
    batch = (torch.randint(0, 6, (4, 7), generator=g), _randn(4, 7, 4, dtype=dtype, seed=3))

    def loss(p, x, y):
        return F.mse_loss(torch.tanh(F.embedding(x, p["w"], padding_idx=-1)), y)

    return params, batch, loss


def _group_norm_affine(dtype):
    # a parameter viewed as (1, C, 1) and broadcast into a product and a sum
    params = {"w": _randn(6, dtype=dtype, seed=1), "b": _randn(6, dtype=dtype, seed=2)}
    batch = (_randn(3, 6, 5, dtype=dtype, seed=3), _randn(3, 6, 5, dtype=dtype, seed=4))

    def loss(p, x, y):
        h = fdl.nn.functional.group_norm(x, 3, p["w"], p["b"])
        return F.mse_loss(torch.tanh(h), y)

    return params, batch, loss


CASES = {
    "embedding_negative_padding_idx": _embedding_padding,
    "group_norm_affine": _group_norm_affine,
    "linear_no_sequence": _linear_no_sequence,
    "conv1d_same_dilated": _conv1d_same,
    "conv2d_same_dilated": _conv2d_same,
    "linear_wide_short_sequence": _wide_short_sequence,
}
DTYPES = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def _loop(loss, params, batch):
    n = batch[0].shape[0]
    per = [torch.func.grad(loss)(params, *(b[i : i + 1] for b in batch)) for i in range(n)]
    return fdl.tree.stack(per)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_rules_grads_equal_single_example_loop(name, dtype):
    params, batch, loss = CASES[name](dtype)
    got = fdl.per_sample_grads(loss, method="rules")(params, *batch)
    assert_trees_close(got, _loop(loss, params, batch), **DTYPES[dtype])


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_rules_norms_equal_norms_of_single_example_grads(name, dtype):
    params, batch, loss = CASES[name](dtype)
    ref = _loop(loss, params, batch)
    expected = sum(t.flatten(1).square().sum(1) for t in fdl.tree.leaves(ref)).sqrt()
    got = fdl.per_sample_grad_norms(loss, method="rules")(params, *batch)
    assert_trees_close(got, expected, **DTYPES[dtype])
