"""Per-sample gradients and norms of single layers against Opacus on the same torch modules.

Each entry builds an fdl layer with random params, loads them into the equivalent torch
module (``fdl.nn.state_dict``), and compares with a sum-reduced loss (Opacus's
``grad_sample`` is then each example's own gradient, as fdl's):

* ``opacus.GradSampleModule`` (hooks): ``p.grad_sample`` against ``fdl.per_sample_grads``;
* ``GradSampleModuleFastGradientClipping`` with ghost clipping (ghost norms for Linear and
  Embedding, per-sample gradients for the norms otherwise): ``get_norm_sample()`` against
  ``fdl.per_sample_grad_norms``.

``MultiheadAttention`` is compared with Opacus's ``DPMultiheadAttention`` (separate
``qlinear``/``klinear``/``vlinear`` layers loaded from torch's ``in_proj_weight``), whose
per-sample gradients are concatenated back into ``in_proj_weight``/``in_proj_bias``.
float64, 1e-10. fdl's rules path is asserted to be the one that ran.

Opacus differs on ``Embedding(padding_idx=...)``: it scatters the output gradients at
padding positions into the padding row, which gets no gradient (torch, fdl, the
single-example loop); the last test pins that difference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import fdl
from fdl.per_sample import per_sample_method

opacus = pytest.importorskip("opacus")
from opacus.layers import DPMultiheadAttention  # noqa: E402

B = 4
DT = torch.float64


def _randn(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT)


def _ints(*shape: int, high: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, shape, generator=g)


def _random_params(layer: fdl.nn.Layer, seed: int) -> Any:
    params = layer.init(fdl.random.key(seed))
    leaves = [0.5 * _randn(*t.shape, seed=seed + i) for i, t in enumerate(fdl.tree.leaves(params))]
    return fdl.tree.unflatten(fdl.tree.structure(params), leaves)


class _SelfAttention(torch.nn.Module):
    """Self-attention on ``(N, L, E)`` through a sequence-first ``(out, weights)`` module."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xt = x.transpose(0, 1)  # (L, N, E)
        return self.inner(xt, xt, xt)[0].transpose(0, 1)  # (N, L, E)


def _mha_torch(params: Any) -> torch.nn.Module:
    # sequence-first: Opacus 1.6's DPMultiheadAttention(batch_first=True) does not compute
    # torch's MultiheadAttention (max difference O(1) for the same weights); False does
    m = DPMultiheadAttention(8, 2, batch_first=False).to(DT)
    m.load_state_dict(dict(fdl.nn.state_dict(params)))
    return _SelfAttention(m)


def _mha_grads(gs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DPMultiheadAttention's per-sample gradients under torch's names."""
    cat = lambda kind: torch.cat([gs[f"inner.{n}linear.{kind}"] for n in "qkv"], 1)  # noqa: E731
    return {
        "in_proj_weight": cat("weight"),
        "in_proj_bias": cat("bias"),
        "out_proj.weight": gs["inner.out_proj.weight"],
        "out_proj.bias": gs["inner.out_proj.bias"],
    }


def _loaded(make: Callable[[], torch.nn.Module]) -> Callable[[Any], torch.nn.Module]:
    def build(params: Any) -> torch.nn.Module:
        module = make().to(DT)  # a fresh module per use: Opacus hooks it in place
        module.load_state_dict(dict(fdl.nn.state_dict(params)))
        return module

    return build


# name -> (fdl layer, torch-module builder from params, inputs, target shape, grad renaming)
CASES: dict[str, tuple[Any, ...]] = {
    "embedding": (
        fdl.nn.Embedding(13, 6, dtype=DT),
        _loaded(lambda: torch.nn.Embedding(13, 6)),
        _ints(B, 5, high=4, seed=1),
        (5, 6),
        None,
    ),
    "linear_seq_gram": (
        fdl.nn.Linear(24, 20, dtype=DT),
        _loaded(lambda: torch.nn.Linear(24, 20)),
        _randn(B, 2, 24, seed=2),
        (2, 20),
        None,
    ),
    "linear_seq_direct": (
        fdl.nn.Linear(3, 4, dtype=DT),
        _loaded(lambda: torch.nn.Linear(3, 4)),
        _randn(B, 6, 3, seed=2),
        (6, 4),
        None,
    ),
    "layer_norm": (
        fdl.nn.LayerNorm(6, dtype=DT),
        _loaded(lambda: torch.nn.LayerNorm(6)),
        _randn(B, 4, 6, seed=3),
        (4, 6),
        None,
    ),
    "layer_norm_2d": (
        fdl.nn.LayerNorm((3, 4), dtype=DT),
        _loaded(lambda: torch.nn.LayerNorm((3, 4))),
        _randn(B, 2, 3, 4, seed=3),
        (2, 3, 4),
        None,
    ),
    "group_norm": (
        fdl.nn.GroupNorm(2, 4, dtype=DT),
        _loaded(lambda: torch.nn.GroupNorm(2, 4)),
        _randn(B, 4, 3, 3, seed=4),
        (4, 3, 3),
        None,
    ),
    "multihead_attention": (
        fdl.nn.MultiheadAttention(8, 2, batch_first=True, dtype=DT),
        _mha_torch,
        _randn(B, 3, 8, seed=5),
        (3, 8),
        _mha_grads,
    ),
}


def _fdl_apply(layer: Any, params: Any, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, fdl.nn.MultiheadAttention):
        return layer.apply(params, x, x, x)[0]
    return layer.apply(params, x)


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    layer, build, x, out_shape, rename = CASES[request.param]
    params = _random_params(layer, seed=7)
    y = _randn(B, *out_shape, seed=8)

    def loss(p, x, y):
        return F.mse_loss(torch.tanh(_fdl_apply(layer, p, x)), y, reduction="sum")

    return params, build, x, y, rename or (lambda g: g), loss


def _batch_first(module: torch.nn.Module) -> bool:
    return not isinstance(module, _SelfAttention)


def _torch_loss(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(torch.tanh(module(x)), y, reduction="sum")


def test_rules_path_ran(case):
    params, _, x, y, _, loss = case
    plan = per_sample_method(loss)(params, x, y)
    assert plan.method == "rules" and all(plan.rules.values()), plan


def test_grads_match_opacus_grad_sample(case):
    params, build, x, y, rename, loss = case
    module = build(params)
    gsm = opacus.GradSampleModule(module, batch_first=_batch_first(module), loss_reduction="sum")
    _torch_loss(gsm, x, y).backward()
    theirs = rename({n: p.grad_sample for n, p in gsm._module.named_parameters()})
    ours = fdl.nn.state_dict(fdl.per_sample_grads(loss, method="rules")(params, x, y))
    assert set(theirs) == set(ours)
    for name, g in ours.items():
        torch.testing.assert_close(g, theirs[name], rtol=1e-10, atol=1e-10, msg=name)


def test_norms_match_opacus_ghost_clipping(case):
    params, build, x, y, _, loss = case
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    module = build(params)
    gsm = GradSampleModuleFastGradientClipping(
        module, batch_first=_batch_first(module), loss_reduction="sum", use_ghost_clipping=True
    )
    _torch_loss(gsm, x, y).backward()
    theirs = gsm.get_norm_sample()
    ours = fdl.per_sample_grad_norms(loss, method="rules")(params, x, y)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_embedding_padding_row_differs_from_opacus():
    layer = fdl.nn.Embedding(13, 6, padding_idx=0, dtype=DT)
    params = _random_params(layer, seed=7)
    x, y = _ints(B, 5, high=4, seed=1), _randn(B, 5, 6, seed=8)
    assert bool((x == 0).any())

    def loss(p, x, y):
        return F.mse_loss(torch.tanh(layer.apply(p, x)), y, reduction="sum")

    module = torch.nn.Embedding(13, 6, padding_idx=0).to(DT)
    module.load_state_dict(dict(fdl.nn.state_dict(params)))
    gsm = opacus.GradSampleModule(module, batch_first=True, loss_reduction="sum")
    _torch_loss(gsm, x, y).backward()
    theirs = gsm._module.weight.grad_sample
    ours = fdl.per_sample_grads(loss, method="rules")(params, x, y)["weight"]
    loop = torch.stack(
        [torch.func.grad(loss)(params, x[i : i + 1], y[i : i + 1])["weight"] for i in range(B)]
    )
    torch.testing.assert_close(ours, loop, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours[:, 1:], theirs[:, 1:], rtol=1e-10, atol=1e-10)
    assert float(ours[:, 0].abs().max()) == 0.0 and float(theirs[:, 0].abs().max()) > 0.0
