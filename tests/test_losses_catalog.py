"""The catalogue's further losses against torch.nn.functional: values and gradients.

One registry at the top: (name, fdl loss, torch loss, builder, options). Every property is
parametrised over every entry, option, reduction, dtype and batched/unbatched layout, so a
new loss is one line. Tolerances: float64 1e-10, float32 1e-5 (a few roundings of O(1) sums).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from fdl import losses as L
from fdl.testing import assert_trees_close

# A builder returns (args, kwargs, differentiable) for a generator, dtype, batched flag and
# option dict: ``args`` the positional tensors, ``differentiable`` the indices of the args the
# gradients are taken with respect to. Option keys starting with "_" are builder flags.
Builder = Callable[[torch.Generator, torch.dtype, bool, dict], tuple[list, dict, list[int]]]
N, K = 5, 4


@dataclass(frozen=True)
class LossCase:
    name: str
    fdl_fn: Callable[..., torch.Tensor]
    torch_fn: Callable[..., torch.Tensor]
    build: Builder
    options: tuple[dict, ...] = ({},)
    unbatched: bool = True  # the loss accepts one unbatched sample
    legacy: bool = True  # the loss takes size_average/reduce


def _flags(opt: dict) -> tuple[dict, dict]:
    return (
        {k: v for k, v in opt.items() if k.startswith("_")},
        {k: v for k, v in opt.items() if not k.startswith("_")},
    )


def _randn(g, dtype, *shape):
    return torch.randn(shape, generator=g, dtype=dtype)


def _sign(g, dtype, *shape):
    return torch.randint(0, 2, shape, generator=g).to(dtype) * 2 - 1  # +-1


def _poisson(g, dtype, batched, opt):
    f, kw = _flags(opt)
    shape = (N, K) if batched else (K,)
    x = _randn(g, dtype, *shape)
    if not kw.get("log_input", True):
        x = torch.rand(*shape, generator=g, dtype=dtype) * 3 + 0.05
    t = torch.rand(*shape, generator=g, dtype=dtype) * 4  # some <= 1 (no Stirling term)
    return [x, t], kw, [0, 1]


def _gaussian(g, dtype, batched, opt):
    f, kw = _flags(opt)
    shape = (N, 3, K) if batched else (K,)
    x, t = _randn(g, dtype, *shape), _randn(g, dtype, *shape)
    if f["_var"] == "float":
        return [x, t, 0.7], kw, [0, 1]
    var_shape = {"same": shape, "drop_last": shape[:-1], "one": (*shape[:-1], 1)}[f["_var"]]
    var = torch.rand(var_shape, generator=g, dtype=dtype) + 0.1
    if f.get("_tiny"):  # some variances below eps: clamped value, straight-through gradient
        var = var * torch.tensor([1e-4, 1.0], dtype=dtype).repeat(var.numel())[: var.numel()].view(
            var.shape
        )
    return [x, t, var], kw, [0, 1, 2]


def _ranking(g, dtype, batched, opt):
    _, kw = _flags(opt)
    shape = (N,) if batched else ()
    return [_randn(g, dtype, *shape), _randn(g, dtype, *shape), _sign(g, dtype, *shape)], kw, [0, 1]


def _hinge(g, dtype, batched, opt):
    f, kw = _flags(opt)
    shape = (N, K) if batched else (K,)
    t = _sign(g, dtype, *shape)
    if f.get("_other_targets"):
        t = t.clone()
        t.view(-1)[::3] = 0.0  # neither 1 nor -1: both terms, as torch
    return [_randn(g, dtype, *shape) * 2, t], kw, [0]


def _soft_margin(g, dtype, batched, opt):
    _, kw = _flags(opt)
    shape = (N, K) if batched else (K,)
    return [_randn(g, dtype, *shape) * 3, _sign(g, dtype, *shape)], kw, [0]


def _multilabel_soft(g, dtype, batched, opt):
    f, kw = _flags(opt)
    shape = (N, K) if batched else (K,)
    t = torch.randint(0, 2, shape, generator=g).to(dtype)
    if f.get("_weight"):
        kw["weight"] = torch.rand(K, generator=g, dtype=dtype) + 0.1
    return [_randn(g, dtype, *shape) * 2, t], kw, [0]


def _multilabel_margin(g, dtype, batched, opt):
    _, kw = _flags(opt)
    c = 6
    rows = []
    for i in range(N if batched else 1):
        perm = torch.randperm(c, generator=g)
        k = i % (c + 1)  # 0 ... c labels; -1 padding and garbage after it
        row = torch.where(torch.arange(c) < k, perm, torch.randint(0, c, (c,), generator=g))
        if k < c:
            row[k] = -1
        if i == 3:
            row[1] = row[0]  # a repeated label
        rows.append(row)
    t = torch.stack(rows) if batched else rows[0]
    x = _randn(g, dtype, *t.shape)
    return [x, t], kw, [0]


def _multi_margin(g, dtype, batched, opt):
    f, kw = _flags(opt)
    x = _randn(g, dtype, *((N, K) if batched else (K,)))
    t = torch.randint(0, K, (N,) if batched else (), generator=g)
    if f.get("_weight"):
        kw["weight"] = torch.rand(K, generator=g, dtype=dtype) + 0.1
    return [x, t], kw, [0]


def _cosine(g, dtype, batched, opt):
    _, kw = _flags(opt)
    shape, tshape = ((N, K), (N,)) if batched else ((K,), ())
    return (
        [_randn(g, dtype, *shape), _randn(g, dtype, *shape), _sign(g, dtype, *tshape)],
        kw,
        [0, 1],
    )


def _triplet(g, dtype, batched, opt):
    _, kw = _flags(opt)
    shape = (N, K) if batched else (K,)
    return [_randn(g, dtype, *shape) for _ in range(3)], kw, [0, 1, 2]


def _cosine_distance(x1, x2):
    return 1.0 - F.cosine_similarity(x1, x2, dim=-1)


def _triplet_dist(g, dtype, batched, opt):
    f, kw = _flags(opt)
    if f.get("_cosine"):
        kw["distance_function"] = _cosine_distance
    return _triplet(g, dtype, batched, {})[0], kw, [0, 1, 2]


T_CTC, C_CTC, S_CTC = 10, 5, 4


def _ctc(g, dtype, batched, opt):
    f, kw = _flags(opt)
    blank = kw.get("blank", 0)
    n = N if batched else 1
    labels = torch.tensor([c for c in range(C_CTC) if c != blank])
    targets = labels[torch.randint(0, C_CTC - 1, (n, S_CTC), generator=g)]
    if n > 1:
        targets[1, 1] = targets[1, 0]  # a repeat needs a blank between
    in_len = torch.tensor([T_CTC, 8, 6, T_CTC, 2][:n])
    tgt_len = torch.tensor([S_CTC, 3, 0, 2, 1][:n])
    if f.get("_impossible"):
        in_len[-1], tgt_len[-1] = 1, S_CTC  # no alignment fits: inf loss
    logits = _randn(g, dtype, T_CTC, n, C_CTC) * 2
    if not batched:
        logits, targets, in_len, tgt_len = logits[:, 0], targets[0], in_len[0], tgt_len[0]
    elif f.get("_concat"):
        targets = torch.cat([targets[i, : tgt_len[i]] for i in range(n)])
    if f.get("_lists"):
        in_len, tgt_len = in_len.reshape(-1).tolist(), tgt_len.reshape(-1).tolist()
    return [logits, targets, in_len, tgt_len], kw, [0]


def _via_log_softmax(fn):
    """The loss of logits: gradients are compared with respect to logits (see ctc_loss's note)."""

    def loss(logits, *rest, **kw):
        return fn(logits.log_softmax(-1), *rest, **kw)

    return loss


LOSSES: list[LossCase] = [
    LossCase(
        "poisson_nll_loss",
        L.poisson_nll_loss,
        F.poisson_nll_loss,
        _poisson,
        ({}, {"full": True}, {"log_input": False}, {"log_input": False, "full": True, "eps": 0.1}),
    ),
    LossCase(
        "gaussian_nll_loss",
        L.gaussian_nll_loss,
        F.gaussian_nll_loss,
        _gaussian,
        (
            {"_var": "same"},
            {"_var": "same", "full": True},
            {"_var": "drop_last"},
            {"_var": "one", "full": True},
            {"_var": "float"},
            {"_var": "same", "_tiny": True, "eps": 1e-2},
        ),
        legacy=False,
    ),
    LossCase(
        "margin_ranking_loss",
        L.margin_ranking_loss,
        F.margin_ranking_loss,
        _ranking,
        ({}, {"margin": 0.5}),
    ),
    LossCase(
        "hinge_embedding_loss",
        L.hinge_embedding_loss,
        F.hinge_embedding_loss,
        _hinge,
        ({}, {"margin": 0.3}, {"_other_targets": True}),
    ),
    LossCase("soft_margin_loss", L.soft_margin_loss, F.soft_margin_loss, _soft_margin),
    LossCase(
        "multilabel_soft_margin_loss",
        L.multilabel_soft_margin_loss,
        F.multilabel_soft_margin_loss,
        _multilabel_soft,
        ({}, {"_weight": True}),
    ),
    LossCase(
        "multilabel_margin_loss",
        L.multilabel_margin_loss,
        F.multilabel_margin_loss,
        _multilabel_margin,
    ),
    LossCase(
        "multi_margin_loss",
        L.multi_margin_loss,
        F.multi_margin_loss,
        _multi_margin,
        ({}, {"p": 2}, {"margin": 0.4, "_weight": True}, {"p": 2, "margin": 2.0, "_weight": True}),
    ),
    LossCase(
        "cosine_embedding_loss",
        L.cosine_embedding_loss,
        F.cosine_embedding_loss,
        _cosine,
        ({}, {"margin": 0.3}, {"margin": -0.2}),
    ),
    LossCase(
        "triplet_margin_loss",
        L.triplet_margin_loss,
        F.triplet_margin_loss,
        _triplet,
        ({}, {"p": 1}, {"p": 3, "eps": 1e-3}, {"swap": True, "margin": 2.0}, {"p": 1.5}),
    ),
    LossCase(
        "triplet_margin_with_distance_loss",
        L.triplet_margin_with_distance_loss,
        F.triplet_margin_with_distance_loss,
        _triplet_dist,
        ({}, {"swap": True}, {"_cosine": True, "margin": 0.5}, {"_cosine": True, "swap": True}),
        legacy=False,
    ),
    LossCase(
        "ctc_loss",
        _via_log_softmax(L.ctc_loss),
        _via_log_softmax(F.ctc_loss),
        _ctc,
        (
            {},
            {"_concat": True},
            {"blank": 2},
            {"_lists": True, "_concat": True},
            {"_impossible": True, "zero_infinity": True},
            {"_impossible": True, "zero_infinity": True, "_concat": True, "blank": 4},
        ),
        legacy=False,
    ),
]

CASES = [(c, o) for c in LOSSES for o in c.options]
CASE_IDS = [f"{c.name}-{i}" for c in LOSSES for i, _ in enumerate(c.options)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _value_and_grads(fn, args, kw, diff, reduction):
    args = [
        a.detach().clone().requires_grad_(i in diff) if isinstance(a, torch.Tensor) else a
        for i, a in enumerate(args)
    ]
    out = fn(*args, reduction=reduction, **kw)
    cot = torch.rand(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype) + 0.5
    grads = torch.autograd.grad((out * cot).sum(), [args[i] for i in diff])
    return out.detach(), grads


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(("case", "opt"), CASES, ids=CASE_IDS)
def test_values_and_grads_match_torch(case, opt, reduction, dtype, batched):
    if not batched and not case.unbatched:
        pytest.skip(f"{case.name} has no unbatched form")
    g = torch.Generator().manual_seed(zlib.crc32(f"{case.name}{opt}{batched}".encode()))
    args, kw, diff = case.build(g, dtype, batched, dict(opt))
    got, got_g = _value_and_grads(case.fdl_fn, args, kw, diff, reduction)
    want, want_g = _value_and_grads(case.torch_fn, args, kw, diff, reduction)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = TOL[dtype]
    assert_trees_close(got, want, rtol=tol, atol=tol, msg=f"{case.name} value")
    assert_trees_close(list(got_g), list(want_g), rtol=tol, atol=tol, msg=f"{case.name} grads")


@pytest.mark.parametrize(("case", "opt"), CASES, ids=CASE_IDS)
def test_inputs_unchanged(case, opt):
    args, kw, _ = case.build(torch.Generator().manual_seed(0), torch.float64, True, dict(opt))
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    case.fdl_fn(*args, reduction="none", **kw)
    for a, b in zip(args, before, strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


@pytest.mark.parametrize("case", LOSSES, ids=[c.name for c in LOSSES])
def test_bad_reduction_string(case):
    args, kw, _ = case.build(torch.Generator().manual_seed(0), torch.float64, True, case.options[0])
    with pytest.raises(ValueError, match="reduction"):
        case.fdl_fn(*args, reduction="avg", **kw)


LEGACY = [c for c in LOSSES if c.legacy]


@pytest.mark.filterwarnings("ignore:size_average and reduce")
@pytest.mark.parametrize(
    ("size_average", "reduce"), [(None, False), (False, None), (True, True), (False, True)]
)
@pytest.mark.parametrize("case", LEGACY, ids=[c.name for c in LEGACY])
def test_legacy_size_average_and_reduce(case, size_average, reduce):
    args, kw, _ = case.build(torch.Generator().manual_seed(0), torch.float64, True, case.options[0])
    got = case.fdl_fn(*args, size_average=size_average, reduce=reduce, **kw)
    want = case.torch_fn(*args, size_average=size_average, reduce=reduce, **kw)
    assert_trees_close(got, want, rtol=1e-10, atol=1e-10)


def test_ctc_exact_gradient_of_log_probs():
    """fdl's gradient in log_probs is the exact -gamma; torch's adds exp(log_probs)."""
    g = torch.Generator().manual_seed(0)
    (logits, targets, il, tl), _, _ = _ctc(g, torch.float64, True, {})
    lp = logits.log_softmax(-1).detach().requires_grad_(True)
    (ours,) = torch.autograd.grad(L.ctc_loss(lp, targets, il, tl, reduction="sum"), lp)
    (theirs,) = torch.autograd.grad(F.ctc_loss(lp, targets, il, tl, reduction="sum"), lp)
    inside = (torch.arange(T_CTC)[:, None] < il[None, :])[..., None]  # (T, N, 1)
    expected = theirs - torch.where(inside, lp.detach().exp(), 0.0)
    assert_trees_close(ours, expected, rtol=1e-10, atol=1e-10)
    # and it is the derivative: a finite difference along a random direction agrees
    d = torch.randn(lp.shape, generator=g, dtype=torch.float64)
    h = 1e-6
    fd = (
        L.ctc_loss(lp.detach() + h * d, targets, il, tl, reduction="sum")
        - L.ctc_loss(lp.detach() - h * d, targets, il, tl, reduction="sum")
    ) / (2 * h)
    assert abs(float(fd) - float((ours * d).sum())) < 1e-6


def test_ctc_infinite_loss_without_zero_infinity():
    g = torch.Generator().manual_seed(0)
    args, _, _ = _ctc(g, torch.float64, True, {"_impossible": True})
    lp = args[0].log_softmax(-1)
    got = L.ctc_loss(lp, *args[1:], reduction="none")
    want = F.ctc_loss(lp, *args[1:], reduction="none")
    assert torch.isinf(got[-1]) and torch.isinf(want[-1])
    assert_trees_close(got[:-1], want[:-1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "match"),
    [
        (L.multi_margin_loss, (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)), {"p": 3}, "p"),
        (
            L.multi_margin_loss,
            (torch.zeros(2, 3), torch.tensor([0, 3])),
            {},
            r"target values must be in \[0, 2\]",
        ),
        (
            L.multilabel_margin_loss,
            (torch.zeros(2, 3), torch.tensor([[0, 3, -1], [0, -1, 0]])),
            {},
            "target values",
        ),
        (L.triplet_margin_loss, (torch.zeros(2, 3),) * 3, {"margin": 0.0}, "margin"),
        (
            L.triplet_margin_with_distance_loss,
            (torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3)),
            {},
            "dimensions",
        ),
        (L.gaussian_nll_loss, (torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, 2)), {}, "var"),
        (L.gaussian_nll_loss, (torch.zeros(2, 3), torch.zeros(2, 3), -torch.ones(2, 3)), {}, "neg"),
        (L.soft_margin_loss, (torch.zeros(2, 3), torch.zeros(3)), {}, "shapes"),
        (
            L.ctc_loss,
            (torch.zeros(4, 2, 3), torch.ones(2, 2, dtype=torch.long), [4, 5], [2, 2]),
            {},
            "input_lengths",
        ),
        (
            L.ctc_loss,
            (torch.zeros(4, 2, 3), torch.ones(2, 2, dtype=torch.long), [4, 4], [2, 2]),
            {"blank": 3},
            "blank",
        ),
    ],
)
def test_bad_arguments(fn: Any, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize("case", LOSSES, ids=[c.name for c in LOSSES])
def test_traces_under_compile_fullgraph(case):
    """Each loss (and its gradient) traces without a graph break; ctc_loss with padded targets."""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(2)
    args, kw, diff = case.build(g, torch.float32, True, dict(case.options[0]))
    i = diff[0]

    def value_and_grad(*xs):
        def f(xi):
            return case.fdl_fn(*xs[:i], xi, *xs[i + 1 :], reduction="mean", **kw)

        return torch.func.grad_and_value(f)(xs[i])

    compiled = torch.compile(value_and_grad, backend="eager", fullgraph=True)
    assert_trees_close(compiled(*args), value_and_grad(*args), rtol=1e-5, atol=1e-5)
