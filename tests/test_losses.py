"""fdl.losses against torch.nn.functional: values, gradients, purity, tracing, bad input.

One registry of losses at the top; every generic property is parametrised over
every entry (and over every option of an entry where the property depends on it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fdl import losses as L
from fdl.testing import assert_trees_close

Builder = Callable[[torch.Generator, torch.dtype, int, int, bool, dict], tuple[Any, Any, dict]]


@dataclass(frozen=True)
class LossCase:
    name: str
    fdl_fn: Callable[..., torch.Tensor]
    torch_fn: Callable[..., torch.Tensor]
    build: Builder
    options: tuple[dict, ...] = ({},)
    reductions: tuple[str, ...] = ("none", "mean", "sum")
    class_indices: bool = False
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- builders
# A builder returns (input, target, kwargs) for batch size n and k features/classes.
# Option keys starting with "_" are builder flags; "weight"/"pos_weight": True asks
# for a random tensor; other keys are passed to the loss unchanged.


def _randn(g, dtype, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def _rand(g, dtype, *shape):
    return torch.rand(*shape, generator=g, dtype=dtype)


def _split_opts(opt: dict) -> tuple[dict, dict]:
    flags = {k: v for k, v in opt.items() if k.startswith("_")}
    kwargs = {k: v for k, v in opt.items() if not k.startswith("_")}
    return flags, kwargs


def _elementwise(g, dtype, n, k, extreme, opt):
    _, kw = _split_opts(opt)
    scale = 100.0 if extreme else 1.0
    x, t = _randn(g, dtype, n, k, scale=scale), _randn(g, dtype, n, k, scale=scale)
    if kw.get("weight"):
        kw["weight"] = _rand(g, dtype, n, k) + 0.1
    return x, t, kw


def _bce(g, dtype, n, k, extreme, opt):
    _, kw = _split_opts(opt)
    x = torch.sigmoid(_randn(g, dtype, n, k, scale=100.0 if extreme else 1.0))
    if extreme:
        x = x.clone()
        x.view(-1)[0] = 0.0
        x.view(-1)[-1] = 1.0
    t = _rand(g, dtype, n, k)
    if kw.get("weight"):
        kw["weight"] = _rand(g, dtype, k) + 0.1  # broadcast over the batch
    return x, t, kw


def _bce_logits(g, dtype, n, k, extreme, opt):
    _, kw = _split_opts(opt)
    x = _randn(g, dtype, n, k, scale=100.0 if extreme else 1.0)
    t = _rand(g, dtype, n, k)
    if kw.get("weight"):
        kw["weight"] = _rand(g, dtype, n, k) + 0.1
    if kw.get("pos_weight"):
        kw["pos_weight"] = _rand(g, dtype, k) * 3 + 0.1
    return x, t, kw


def _class_shapes(n, k, flags):
    if flags.get("_unbatched"):
        return (k,), ()
    if flags.get("_spatial"):
        return (n, k, 2, 3), (n, 2, 3)
    return (n, k), (n,)


def _index_target(g, k, shape, flags, kw):
    t = torch.randint(0, k, shape, generator=g)
    if "_ignore" in flags and t.dim() > 0:
        ignore = flags["_ignore"]
        kw["ignore_index"] = ignore
        flat = t.view(-1)
        flat[1::2] = ignore  # every other target ignored ...
        if flat[0] == ignore:  # ... but never all of them
            flat[0] = (ignore + 1) % k
    return t


def _cross_entropy_indices(g, dtype, n, k, extreme, opt):
    flags, kw = _split_opts(opt)
    in_shape, t_shape = _class_shapes(n, k, flags)
    x = _randn(g, dtype, *in_shape, scale=100.0 if extreme else 1.0)
    t = _index_target(g, k, t_shape, flags, kw)
    if kw.get("weight"):
        kw["weight"] = _rand(g, dtype, k) + 0.1
    return x, t, kw


def _cross_entropy_probs(g, dtype, n, k, extreme, opt):
    flags, kw = _split_opts(opt)
    in_shape, _ = _class_shapes(n, k, flags)
    x = _randn(g, dtype, *in_shape, scale=100.0 if extreme else 1.0)
    t = torch.softmax(_randn(g, dtype, *in_shape), dim=0 if len(in_shape) == 1 else 1)
    if kw.get("weight"):
        kw["weight"] = _rand(g, dtype, k) + 0.1
    return x, t, kw


def _nll(g, dtype, n, k, extreme, opt):
    x, t, kw = _cross_entropy_indices(g, dtype, n, k, extreme, opt)
    return torch.log_softmax(x, dim=0 if x.dim() == 1 else 1), t, kw


def _kl(g, dtype, n, k, extreme, opt):
    _, kw = _split_opts(opt)
    x = torch.log_softmax(_randn(g, dtype, n, k, scale=100.0 if extreme else 1.0), dim=1)
    t = torch.softmax(_randn(g, dtype, n, k), dim=1)
    if kw.get("log_target"):
        t = torch.log(t)
    else:
        t = t.clone()
        t.view(-1)[0] = 0.0  # xlogy(0, 0) = 0
    return x, t, kw


_CLASS_OPTIONS = (
    {},
    {"weight": True},
    {"_ignore": -100},
    {"_ignore": 1},
    {"weight": True, "_ignore": -100},
    {"_spatial": True, "weight": True, "_ignore": -100},
    {"_unbatched": True},
    {"_unbatched": True, "weight": True},
)

LOSSES: list[LossCase] = [
    LossCase("mse_loss", L.mse_loss, F.mse_loss, _elementwise, ({}, {"weight": True})),
    LossCase("l1_loss", L.l1_loss, F.l1_loss, _elementwise, ({}, {"weight": True})),
    LossCase(
        "smooth_l1_loss",
        L.smooth_l1_loss,
        F.smooth_l1_loss,
        _elementwise,
        ({}, {"beta": 0.5}, {"beta": 0.0}, {"beta": 2.0}),
    ),
    LossCase(
        "huber_loss",
        L.huber_loss,
        F.huber_loss,
        _elementwise,
        ({}, {"delta": 0.3}, {"delta": 2.0, "weight": True}),
    ),
    LossCase(
        "binary_cross_entropy",
        L.binary_cross_entropy,
        F.binary_cross_entropy,
        _bce,
        ({}, {"weight": True}),
    ),
    LossCase(
        "binary_cross_entropy_with_logits",
        L.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        _bce_logits,
        ({}, {"weight": True}, {"pos_weight": True}, {"weight": True, "pos_weight": True}),
    ),
    LossCase(
        "cross_entropy",
        L.cross_entropy,
        F.cross_entropy,
        _cross_entropy_indices,
        _CLASS_OPTIONS
        + (
            {"label_smoothing": 0.2},
            {"label_smoothing": 0.3, "weight": True, "_ignore": -100},
            {"label_smoothing": 0.1, "weight": True, "_ignore": 2, "_spatial": True},
            {"label_smoothing": 1.0, "weight": True},
            {"label_smoothing": 0.2, "_unbatched": True, "weight": True},
        ),
        class_indices=True,
    ),
    LossCase(
        "cross_entropy_probs",
        L.cross_entropy,
        F.cross_entropy,
        _cross_entropy_probs,
        (
            {},
            {"weight": True},
            {"label_smoothing": 0.25},
            {"label_smoothing": 0.1, "weight": True},
            {"_spatial": True, "weight": True, "label_smoothing": 0.1},
            {"_unbatched": True, "weight": True},
        ),
    ),
    LossCase("nll_loss", L.nll_loss, F.nll_loss, _nll, _CLASS_OPTIONS, class_indices=True),
    LossCase(
        "kl_div",
        L.kl_div,
        F.kl_div,
        _kl,
        ({}, {"log_target": True}),
        reductions=("none", "batchmean", "sum", "mean"),
    ),
]

CASES = [(case, opt) for case in LOSSES for opt in case.options]
CASE_IDS = [f"{case.name}-{i}" for case in LOSSES for i, _ in enumerate(case.options)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


# --------------------------------------------------------------------------- helpers


def _close(actual, expected, dtype, what):
    tol = TOL[dtype]
    assert_trees_close(actual, expected, rtol=tol, atol=tol, msg=what)


def _diff_args(x, t):
    """The tensors gradients are taken with respect to: input, and a floating target."""
    return [x] + ([t] if t.is_floating_point() else [])


def _value_and_grads(fn, x, t, kw, reduction, cotangent_seed=0):
    x = x.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(t.is_floating_point())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's kl_div 'mean' warning
        out = fn(x, t, reduction=reduction, **kw)
    g = torch.Generator().manual_seed(cotangent_seed)
    cot = torch.rand(out.shape, generator=g, dtype=out.dtype) + 0.5
    grads = torch.autograd.grad((out * cot).sum(), _diff_args(x, t))
    return out.detach(), grads


def _check_parity(case, opt, dtype, n, k, seed, extreme=False):
    g = torch.Generator().manual_seed(seed)
    x, t, kw = case.build(g, dtype, n, k, extreme, dict(opt))
    for reduction in case.reductions:
        what = f"{case.name} {opt} {reduction} {dtype}"
        got, got_g = _value_and_grads(case.fdl_fn, x, t, kw, reduction)
        want, want_g = _value_and_grads(case.torch_fn, x, t, kw, reduction)
        assert got.shape == want.shape, what
        assert got.dtype == want.dtype, what
        _close(got, want, dtype, what + " value")
        for i, (a, b) in enumerate(zip(got_g, want_g, strict=True)):
            _close(a, b, dtype, what + f" grad {i}")
        if extreme:
            assert torch.isfinite(got).all(), what
            assert torch.isfinite(got_g[0]).all(), what


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("case", "opt"), CASES, ids=CASE_IDS)
@settings(max_examples=4, deadline=None)
@given(n=st.integers(2, 5), k=st.integers(2, 6), seed=st.integers(0, 2**31 - 1))
def test_parity_values_and_grads(case, opt, dtype, n, k, seed):
    _check_parity(case, opt, dtype, n, k, seed)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("case", "opt"), CASES, ids=CASE_IDS)
def test_extreme_inputs_finite_and_equal(case, opt, dtype):
    """Logits of magnitude ~100 (and probabilities of exactly 0 and 1 for BCE)."""
    _check_parity(case, opt, dtype, n=4, k=5, seed=7, extreme=True)


@pytest.mark.parametrize("case", LOSSES, ids=lambda c: c.name)
def test_pure_inputs_unchanged(case):
    g = torch.Generator().manual_seed(0)
    opt = case.options[-1]
    x, t, kw = case.build(g, torch.float64, 3, 4, False, dict(opt))
    before = [a.clone() for a in (x, t, *kw.values()) if isinstance(a, torch.Tensor)]
    for reduction in case.reductions:
        case.fdl_fn(x, t, reduction=reduction, **kw)
    after = [a for a in (x, t, *kw.values()) if isinstance(a, torch.Tensor)]
    for b, a in zip(before, after, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", LOSSES, ids=lambda c: c.name)
def test_vmap_per_sample_grads(case):
    """Per-example losses and gradients under torch.func.vmap match the batched 'sum' loss."""
    g = torch.Generator().manual_seed(1)
    x, t, kw = case.build(g, torch.float64, 4, 3, False, {})

    def one(xi, ti):
        return case.fdl_fn(xi[None], ti[None], reduction="sum", **kw)

    per_sample = torch.func.vmap(one)(x, t)
    full = case.fdl_fn(x, t, reduction="none", **kw)
    _close(per_sample, full.reshape(x.shape[0], -1).sum(1), torch.float64, "vmap value")
    per_sample_grads = torch.func.vmap(torch.func.grad(one))(x, t)
    batch_grad = torch.func.grad(lambda xx: case.fdl_fn(xx, t, reduction="sum", **kw))(x)
    _close(per_sample_grads, batch_grad, torch.float64, "vmap grad")


@pytest.mark.parametrize("case", LOSSES, ids=lambda c: c.name)
def test_traces_under_compile_fullgraph(case):
    torch._dynamo.reset()  # every case traces the same local function afresh
    g = torch.Generator().manual_seed(2)
    x, t, kw = case.build(g, torch.float32, 3, 4, False, dict(case.options[-1]))
    reduction = case.reductions[1]

    def loss_and_grad(x, t):
        return torch.func.grad_and_value(lambda xx: case.fdl_fn(xx, t, reduction=reduction, **kw))(
            x
        )

    compiled = torch.compile(loss_and_grad, backend="eager", fullgraph=True)
    got = compiled(x, t)
    want = loss_and_grad(x, t)
    _close(got, want, torch.float32, "compiled")


def test_cross_entropy_compiles_with_inductor():
    """One representative loss through the default backend (code generation included)."""
    g = torch.Generator().manual_seed(3)
    x, t, kw = _cross_entropy_indices(g, torch.float32, 8, 10, False, {"label_smoothing": 0.1})
    fn = torch.compile(lambda x, t: L.cross_entropy(x, t, **kw), fullgraph=True)
    _close(fn(x, t), F.cross_entropy(x, t, **kw), torch.float32, "inductor")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", LOSSES, ids=lambda c: c.name)
def test_bad_reduction_string(case):
    g = torch.Generator().manual_seed(0)
    x, t, kw = case.build(g, torch.float64, 3, 4, False, {})
    with pytest.raises(ValueError, match="reduction"):
        case.fdl_fn(x, t, reduction="average", **kw)


@pytest.mark.parametrize("case", LOSSES, ids=lambda c: c.name)
def test_shape_mismatch(case):
    g = torch.Generator().manual_seed(0)
    x, t, kw = case.build(g, torch.float64, 3, 4, False, {})
    bad = t[:-1]  # one example fewer than the input
    with pytest.raises(ValueError, match="shape"):
        case.fdl_fn(x, bad, **kw)


@pytest.mark.parametrize("case", LOSSES, ids=lambda c: c.name)
def test_non_tensor_input(case):
    g = torch.Generator().manual_seed(0)
    x, t, kw = case.build(g, torch.float64, 3, 4, False, {})
    with pytest.raises(TypeError, match="input"):
        case.fdl_fn(x.tolist(), t, **kw)


@pytest.mark.parametrize("case", [c for c in LOSSES if c.class_indices], ids=lambda c: c.name)
@pytest.mark.parametrize("bad_value", [4, 17, -1])
def test_class_index_out_of_range(case, bad_value):
    g = torch.Generator().manual_seed(0)
    x, t, kw = case.build(g, torch.float64, 3, 4, False, {})
    t = t.clone()
    t[1] = bad_value
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        case.fdl_fn(x, t, **kw)


@pytest.mark.parametrize("case", [c for c in LOSSES if c.class_indices], ids=lambda c: c.name)
def test_class_weight_shape(case):
    g = torch.Generator().manual_seed(0)
    x, t, kw = case.build(g, torch.float64, 3, 4, False, {})
    with pytest.raises(ValueError, match=r"\(4,\)"):
        case.fdl_fn(x, t, weight=torch.ones(5, dtype=torch.float64))


def test_binary_cross_entropy_input_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        L.binary_cross_entropy(torch.tensor([0.5, 1.5]), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (L.smooth_l1_loss, {"beta": -1.0}, "beta"),
        (L.huber_loss, {"delta": 0.0}, "delta"),
        (L.cross_entropy, {"label_smoothing": 1.5}, "label_smoothing"),
    ],
)
def test_bad_hyperparameters(fn, kwargs, match):
    x = torch.randn(3, 4)
    t = torch.randint(0, 4, (3,)) if fn is L.cross_entropy else torch.randn(3, 4)
    with pytest.raises(ValueError, match=match):
        fn(x, t, **kwargs)


def test_legacy_size_average_and_reduce():
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for size_average, reduce in [(None, False), (False, None), (True, True), (False, True)]:
            got = L.mse_loss(x, t, size_average=size_average, reduce=reduce)
            want = F.mse_loss(x, t, size_average=size_average, reduce=reduce)
            _close(got, want, torch.float64, f"{size_average} {reduce}")


def test_all_ignored_mean_is_nan_like_torch():
    x = torch.randn(3, 4, dtype=torch.float64)
    t = torch.full((3,), -100)
    assert torch.isnan(L.cross_entropy(x, t)) and torch.isnan(F.cross_entropy(x, t))


# --------------------------------------------------------------------------- values torch rejects
# (name, loss name, input, target, kwargs, the argument fdl's message must name). torch's
# function must reject the same call (checked below), so the list cannot drift from torch.

_P = torch.tensor([[0.2, 0.7], [0.5, 0.9]], dtype=torch.float64)
_T = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
_LOGITS = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
_NAN = float("nan")

REJECTED = [
    ("bce input > 1", "binary_cross_entropy", _P + 0.5, _T, {}, "input"),
    ("bce input < 0", "binary_cross_entropy", _P - 0.6, _T, {}, "input"),
    ("bce input nan", "binary_cross_entropy", _P.where(_P != 0.5, _NAN), _T, {}, "input"),
    ("bce target > 1", "binary_cross_entropy", _P, _T * 1.5, {}, "target"),
    ("bce target < 0", "binary_cross_entropy", _P, _T - 0.5, {}, "target"),
    ("nll index = C", "nll_loss", _LOGITS, torch.tensor([0, 4, 1]), {}, "target"),
    ("nll index < 0", "nll_loss", _LOGITS, torch.tensor([0, -2, 1]), {}, "target"),
    ("ce index = C", "cross_entropy", _LOGITS, torch.tensor([0, 1, 4]), {}, "target"),
    (
        "ce smoothing > 1",
        "cross_entropy",
        _LOGITS,
        torch.tensor([0, 1, 2]),
        {"label_smoothing": 1.5},
        "label_smoothing",
    ),  # fmt: skip
    ("smooth_l1 beta < 0", "smooth_l1_loss", _P, _T, {"beta": -1.0}, "beta"),
    ("huber delta = 0", "huber_loss", _P, _T, {"delta": 0.0}, "delta"),
]

# values torch accepts although they are outside a loss's usual domain: fdl gives torch's result
ACCEPTED = [
    ("bce with logits target > 1", "binary_cross_entropy_with_logits", _P, _T * 1.5, {}),
    ("ce probability target < 0", "cross_entropy", _LOGITS, _LOGITS.softmax(1) - 0.2, {}),
    ("kl_div target < 0", "kl_div", _P.log(), _T - 0.5, {"reduction": "sum"}),
    ("kl_div input > 0", "kl_div", _P + 1.0, _T, {"reduction": "batchmean"}),
    ("nll ignored index out of range", "nll_loss", _LOGITS, torch.tensor([0, -100, 1]), {}),
]


@pytest.mark.parametrize(
    ("name", "loss", "x", "t", "kw", "arg"), REJECTED, ids=[r[0] for r in REJECTED]
)
def test_values_torch_rejects_raise_naming_the_argument(name, loss, x, t, kw, arg):
    with pytest.raises((RuntimeError, IndexError, ValueError)):
        getattr(F, loss)(x, t, **kw)
    with pytest.raises(ValueError, match=rf"^{loss}: .*{arg}"):
        getattr(L, loss)(x, t, **kw)


@pytest.mark.parametrize(("name", "loss", "x", "t", "kw"), ACCEPTED, ids=[r[0] for r in ACCEPTED])
def test_values_torch_accepts_give_torchs_result(name, loss, x, t, kw):
    _close(getattr(L, loss)(x, t, **kw), getattr(F, loss)(x, t, **kw), torch.float64, name)


def test_rejection_checks_are_skipped_while_compiling():
    """Documented behaviour: under torch.compile the formula runs on the values as given."""
    torch._dynamo.reset()
    x, t = _P + 0.5, _T  # input > 1: log(1 - input) is NaN
    fn = torch.compile(L.binary_cross_entropy, fullgraph=True, backend="eager")
    assert torch.isnan(fn(x, t))
