"""fdl.metrics against direct per-sample computations (numpy loops) and torch losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import fdl.metrics as fm
from fdl.testing import assert_pure, assert_trees_close

# ---------------------------------------------------------------------------
# Direct references: explicit loops over samples and classes, float64 numpy.
# ---------------------------------------------------------------------------


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def ref_confusion(pred, target, c):
    m = np.zeros((c, c), dtype=np.int64)
    for p, t in zip(pred, target, strict=True):
        m[t, p] += 1
    return m


def ref_accuracy(scores, target, c):
    pred = [int(np.argmax(row)) for row in scores]
    return sum(p == t for p, t in zip(pred, target, strict=True)) / len(target)


def ref_top_k(scores, target, c, k):
    hits = 0
    for row, t in zip(scores, target, strict=True):
        above = sum(1 for j in range(c) if row[j] > row[t])
        hits += above < k
    return hits / len(target)


def _ref_counts(scores, target, c):
    pred = [int(np.argmax(row)) for row in scores]
    tp = [sum(1 for p, t in zip(pred, target, strict=True) if p == t == j) for j in range(c)]
    fp = [sum(1 for p, t in zip(pred, target, strict=True) if p == j != t) for j in range(c)]
    fn = [sum(1 for p, t in zip(pred, target, strict=True) if t == j != p) for j in range(c)]
    present = [j in set(pred) | set(int(t) for t in target) for j in range(c)]
    return tp, fp, fn, present


def _ref_average(num, den, present, average):
    per = [n / d if d > 0 else 0.0 for n, d in zip(num, den, strict=True)]
    if average is None:
        return np.array(per)
    if average == "micro":
        return sum(num) / sum(den) if sum(den) > 0 else 0.0
    vals = [v for v, p in zip(per, present, strict=True) if p]
    return sum(vals) / len(vals)


def ref_precision(scores, target, c, average):
    tp, fp, fn, present = _ref_counts(scores, target, c)
    return _ref_average(tp, [a + b for a, b in zip(tp, fp, strict=True)], present, average)


def ref_recall(scores, target, c, average):
    tp, fp, fn, present = _ref_counts(scores, target, c)
    return _ref_average(tp, [a + b for a, b in zip(tp, fn, strict=True)], present, average)


def ref_f1(scores, target, c, average):
    tp, fp, fn, present = _ref_counts(scores, target, c)
    num = [2 * a for a in tp]
    den = [2 * a + b + d for a, b, d in zip(tp, fp, fn, strict=True)]
    return _ref_average(num, den, present, average)


def ref_log_loss(probs, target, c):
    eps = np.finfo(probs.dtype).eps
    return -sum(math.log(min(max(probs[n, t], eps), 1 - eps)) for n, t in enumerate(target)) / len(
        target
    )


def ref_mse(x, y):
    x, y = x.ravel(), y.ravel()
    return sum((a - b) ** 2 for a, b in zip(x, y, strict=True)) / len(x)


def ref_mae(x, y):
    x, y = x.ravel(), y.ravel()
    return sum(abs(a - b) for a, b in zip(x, y, strict=True)) / len(x)


def ref_r2(x, y):
    cols = [(x, y)] if x.ndim == 1 else [(x[:, j], y[:, j]) for j in range(x.shape[1])]
    vals = []
    for xc, yc in cols:
        mean = sum(yc) / len(yc)
        ss_res = sum((b - a) ** 2 for a, b in zip(xc, yc, strict=True))
        ss_tot = sum((b - mean) ** 2 for b in yc)
        vals.append(1 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0))
    return sum(vals) / len(vals)


def _log_loss_logits(input, target, **kw):
    return fm.log_loss(input.log(), target, from_logits=True, **kw)


# ---------------------------------------------------------------------------
# Registries: (name, fdl metric, direct reference, kwargs, accepts class indices)
# Every classification metric receives probabilities (N, C) and targets (N,).
# ---------------------------------------------------------------------------

CLASSIFICATION = [
    ("accuracy", fm.accuracy, ref_accuracy, {}, True),
    ("top_k_accuracy_k1", fm.top_k_accuracy, ref_top_k, {"k": 1}, False),
    ("top_k_accuracy_k2", fm.top_k_accuracy, ref_top_k, {"k": 2}, False),
    ("confusion_matrix", fm.confusion_matrix, None, {}, True),
    ("precision_macro", fm.precision, ref_precision, {"average": "macro"}, True),
    ("precision_micro", fm.precision, ref_precision, {"average": "micro"}, True),
    ("precision_none", fm.precision, ref_precision, {"average": None}, True),
    ("recall_macro", fm.recall, ref_recall, {"average": "macro"}, True),
    ("recall_micro", fm.recall, ref_recall, {"average": "micro"}, True),
    ("recall_none", fm.recall, ref_recall, {"average": None}, True),
    ("f1_macro", fm.f1, ref_f1, {"average": "macro"}, True),
    ("f1_micro", fm.f1, ref_f1, {"average": "micro"}, True),
    ("f1_none", fm.f1, ref_f1, {"average": None}, True),
    ("log_loss", fm.log_loss, ref_log_loss, {}, False),
    ("log_loss_from_logits", _log_loss_logits, ref_log_loss, {}, False),
]
CLS_IDS = [e[0] for e in CLASSIFICATION]

# (name, fdl metric, direct reference, torch counterpart or None)
REGRESSION = [
    ("mse", fm.mse, ref_mse, F.mse_loss),
    ("mae", fm.mae, ref_mae, F.l1_loss),
    ("r2", fm.r2, ref_r2, None),
]
REG_IDS = [e[0] for e in REGRESSION]

# metrics that take num_classes (for class-index input and for vmap/compile)
_TAKES_NUM_CLASSES = {fm.confusion_matrix, fm.precision, fm.recall, fm.f1}


def _reference(entry, probs, target):
    name, metric, ref, kwargs, _ = entry
    c = probs.shape[1]
    p, t = _np(probs), [int(v) for v in _np(target)]
    if metric is fm.confusion_matrix:
        return ref_confusion([int(np.argmax(r)) for r in p], t, c)
    return ref(p, t, c, **kwargs)


def _problem(seed: int, n: int, c: int, ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (n, c) in float64 and targets (n,); ``ties`` makes equal scores common."""
    g = torch.Generator().manual_seed(seed)
    if ties:
        logits = torch.randint(-2, 3, (n, c), generator=g).double()
    else:
        logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    probs = torch.exp(logits - logits.logsumexp(1, keepdim=True))
    target = torch.randint(0, c, (n,), generator=g)
    return probs, target


problems = st.builds(
    _problem,
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 30),
    c=st.integers(2, 6),
    ties=st.booleans(),
)


# ---------------------------------------------------------------------------
# Classification: generic properties over the registry
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("entry", CLASSIFICATION, ids=CLS_IDS)
@settings(max_examples=25, deadline=None)
@given(problem=problems)
def test_classification_equals_direct_computation(entry, problem):
    probs, target = problem
    name, metric, _, kwargs, _ = entry
    got = metric(probs, target, **kwargs)
    expected = torch.as_tensor(_reference(entry, probs, target), dtype=got.dtype)
    assert got.shape == expected.shape
    assert_trees_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("entry", [e for e in CLASSIFICATION if e[4]], ids=lambda e: e[0])
@settings(max_examples=10, deadline=None)
@given(problem=problems)
def test_class_indices_equal_scores(entry, problem):
    probs, target = problem
    _, metric, _, kwargs, _ = entry
    c = probs.shape[1]
    extra = {"num_classes": c} if metric in _TAKES_NUM_CLASSES else {}
    got = metric(probs.argmax(1), target, **extra, **kwargs)
    assert_trees_close(got, metric(probs, target, **kwargs).to(got.dtype))


@pytest.mark.parametrize("entry", CLASSIFICATION, ids=CLS_IDS)
@settings(max_examples=10, deadline=None)
@given(problem=problems, seed=st.integers(0, 1000))
def test_mask_equals_subset(entry, problem, seed):
    probs, target = problem
    _, metric, _, kwargs, _ = entry
    mask = torch.rand(target.shape, generator=torch.Generator().manual_seed(seed)) < 0.6
    mask[0] = True
    c = probs.shape[1]
    extra = {"num_classes": c} if metric in _TAKES_NUM_CLASSES else {}
    got = metric(probs, target, mask=mask, **extra, **kwargs)
    expected = metric(probs[mask], target[mask], **extra, **kwargs)
    assert_trees_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("entry", CLASSIFICATION, ids=CLS_IDS)
def test_classification_pure(entry):
    probs, target = _problem(0, 12, 4, ties=True)
    _, metric, _, kwargs, _ = entry
    assert_pure(metric, probs, target, mask=torch.ones(12, dtype=torch.bool), **kwargs)


@pytest.mark.parametrize("entry", CLASSIFICATION, ids=CLS_IDS)
def test_classification_vmap_equals_loop(entry):
    _, metric, _, kwargs, _ = entry
    problems_ = [_problem(s, 9, 3, ties=s % 2 == 0) for s in range(4)]
    probs = torch.stack([p for p, _ in problems_])
    target = torch.stack([t for _, t in problems_])
    extra = {"num_classes": 3} if metric in _TAKES_NUM_CLASSES else {}
    got = torch.func.vmap(lambda p, t: metric(p, t, **extra, **kwargs))(probs, target)
    expected = torch.stack([metric(p, t, **kwargs) for p, t in problems_])
    assert_trees_close(got, expected)


def test_classification_float32_dtype_kept():
    probs, target = _problem(1, 10, 3, ties=False)
    assert fm.accuracy(probs.float(), target).dtype == torch.float32
    assert fm.accuracy(probs, target).dtype == torch.float64
    assert fm.log_loss(probs.float(), target).dtype == torch.float32
    assert fm.confusion_matrix(probs, target).dtype == torch.int64


# ---------------------------------------------------------------------------
# Classification: specific behaviour
# ---------------------------------------------------------------------------


def test_top_k_matches_torch_topk_without_ties():
    probs, target = _problem(3, 40, 7, ties=False)
    for k in range(1, 8):
        hit = (probs.topk(k, dim=1).indices == target[:, None]).any(1).double().mean()
        assert_trees_close(fm.top_k_accuracy(probs, target, k), hit)
    assert fm.top_k_accuracy(probs, target, 7) == 1.0


def test_micro_scores_equal_accuracy():
    probs, target = _problem(4, 50, 5, ties=True)
    acc = fm.accuracy(probs, target)
    for metric in (fm.precision, fm.recall, fm.f1):
        assert_trees_close(metric(probs, target, average="micro"), acc)


def test_macro_leaves_out_absent_classes():
    pred = torch.tensor([0, 0, 1, 1])
    target = torch.tensor([0, 1, 1, 1])
    # class 2 occurs in neither: with num_classes=3 it must not pull the mean down
    assert_trees_close(
        fm.precision(pred, target, 3), fm.precision(pred, target, 2).to(torch.float32)
    )
    per = fm.precision(pred, target, 3, average=None)
    assert per.tolist() == [0.5, 1.0, 0.0]


def test_zero_division_is_zero():
    # class 1 is never predicted: its precision has denominator 0
    pred = torch.tensor([0, 0, 0])
    target = torch.tensor([0, 1, 1])
    assert fm.precision(pred, target, average=None).tolist()[1] == 0.0
    assert fm.f1(pred, target, average=None).tolist()[1] == 0.0


def test_confusion_matrix_layout_rows_true_columns_predicted():
    m = fm.confusion_matrix(torch.tensor([2, 2]), torch.tensor([0, 0]), 3)
    assert m[0, 2] == 2 and m.sum() == 2
    probs, target = _problem(5, 30, 4, ties=True)
    m = fm.confusion_matrix(probs, target)
    assert m.sum(1).tolist() == torch.bincount(target, minlength=4).tolist()
    assert m.trace() == (probs.argmax(1) == target).sum()


def test_log_loss_parity_with_torch_values_and_grads():
    logits = torch.randn(20, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    target = torch.randint(0, 5, (20,), generator=torch.Generator().manual_seed(7))

    def fdl_logits(z):
        return fm.log_loss(z, target, from_logits=True)

    def fdl_probs(z):
        return fm.log_loss(torch.softmax(z, 1), target)

    def torch_ce(z):
        return F.cross_entropy(z, target)

    for fn in (fdl_logits, fdl_probs):
        val, grad = torch.func.grad_and_value(fn)(logits)[::-1]
        ref_val, ref_grad = torch.func.grad_and_value(torch_ce)(logits)[::-1]
        assert_trees_close((val, grad), (ref_val, ref_grad), rtol=1e-10, atol=1e-12)


def test_log_loss_binary_vector_input():
    p = torch.tensor([0.9, 0.2, 0.6, 0.0], dtype=torch.float64)
    t = torch.tensor([1, 0, 0, 1])
    eps = torch.finfo(torch.float64).eps
    expected = F.binary_cross_entropy(p.clamp(eps, 1 - eps), t.double())
    assert_trees_close(fm.log_loss(p, t), expected, rtol=1e-10, atol=0)
    assert torch.isfinite(fm.log_loss(p, t))


def test_metrics_compile_fullgraph():
    probs, target = _problem(8, 16, 4, ties=False)
    mask = torch.arange(16) % 3 != 0

    def all_metrics(p, t, m):
        out = {}
        for name, metric, _, kwargs, _ in CLASSIFICATION:
            extra = {"num_classes": 4} if metric in _TAKES_NUM_CLASSES else {}
            out[name] = metric(p, t, mask=m, **extra, **kwargs)
        out["r2"] = fm.r2(p, p.flip(0))
        out["mse"] = fm.mse(p, p.flip(0))
        return out

    # traced by dynamo with fullgraph=True; aot_eager skips inductor code generation (fast)
    compiled = torch.compile(all_metrics, fullgraph=True, backend="aot_eager")
    assert_trees_close(compiled(probs, target, mask), all_metrics(probs, target, mask))


# ---------------------------------------------------------------------------
# Regression
# ---------------------------------------------------------------------------

reg_problems = st.builds(
    lambda seed, n, d, const: _reg_problem(seed, n, d, const),
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 25),
    d=st.sampled_from([None, 1, 3]),
    const=st.booleans(),
)


def _reg_problem(seed, n, d, const):
    g = torch.Generator().manual_seed(seed)
    shape = (n,) if d is None else (n, d)
    y = torch.randn(shape, generator=g, dtype=torch.float64)
    if const:
        y = torch.zeros_like(y) + 1.5  # constant target: R^2 denominator is 0
    x = y + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("entry", REGRESSION, ids=REG_IDS)
@settings(max_examples=25, deadline=None)
@given(problem=reg_problems)
def test_regression_equals_direct_computation(entry, problem):
    _, metric, ref, _ = entry
    x, y = problem
    got = metric(x, y)
    assert_trees_close(got, torch.tensor(ref(_np(x), _np(y)), dtype=got.dtype), rtol=1e-10)
    # a perfect prediction
    perfect = metric(y, y)
    assert perfect == (1.0 if metric is fm.r2 else 0.0)


@pytest.mark.parametrize("entry", REGRESSION, ids=REG_IDS)
def test_regression_grads(entry):
    _, metric, _, torch_fn = entry
    x, y = _reg_problem(0, 10, 3, False)
    x.requires_grad_(True)
    if torch_fn is None:
        assert torch.autograd.gradcheck(lambda a: metric(a, y), (x,))
        return
    val, grad = torch.func.grad_and_value(lambda a: metric(a, y))(x)[::-1]
    ref_val, ref_grad = torch.func.grad_and_value(lambda a: torch_fn(a, y))(x)[::-1]
    assert_trees_close((val, grad), (ref_val, ref_grad), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("entry", REGRESSION, ids=REG_IDS)
def test_regression_pure_and_shape_checked(entry):
    _, metric, _, _ = entry
    x, y = _reg_problem(1, 6, 2, False)
    assert_pure(metric, x, y)
    with pytest.raises(ValueError, match=r"one shape.*\(6, 2\).*\(6, 1\)"):
        metric(x, y[:, :1])
    with pytest.raises(TypeError, match="floating"):
        metric(x, y.long())


def test_r2_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        fm.r2(torch.ones(1), torch.ones(1))


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

_P, _T = _problem(9, 6, 3, ties=False)


@pytest.mark.parametrize("entry", CLASSIFICATION, ids=CLS_IDS)
def test_mismatched_batch_raises(entry):
    _, metric, _, kwargs, _ = entry
    with pytest.raises(ValueError, match=r"input \(6, 3\) vs target \(5,\)"):
        metric(_P, _T[:5], **kwargs)


@pytest.mark.parametrize("entry", CLASSIFICATION, ids=CLS_IDS)
def test_target_out_of_range_raises(entry):
    _, metric, _, kwargs, _ = entry
    bad = _T.clone()
    bad[2] = 3
    with pytest.raises(ValueError, match=r"target holds class indices in \[\d, 3\].*\[0, 2\]"):
        metric(_P, bad, **kwargs)


@pytest.mark.parametrize("entry", CLASSIFICATION, ids=CLS_IDS)
def test_float_target_and_bad_mask_raise(entry):
    _, metric, _, kwargs, _ = entry
    with pytest.raises(TypeError, match="integer class indices"):
        metric(_P, _T.double(), **kwargs)
    with pytest.raises(ValueError, match=r"mask must have shape \(6,\)"):
        metric(_P, _T, mask=torch.ones(5, dtype=torch.bool), **kwargs)


@pytest.mark.parametrize("metric", [fm.confusion_matrix, fm.precision, fm.recall, fm.f1])
def test_class_count_mismatch_raises(metric):
    with pytest.raises(ValueError, match="C = 3 classes but num_classes = 4"):
        metric(_P, _T, 4)
    with pytest.raises(ValueError, match=r"input holds class indices in \[\d, 5\]"):
        metric(torch.tensor([0, 5, 1, 1, 1, 1]), _T, 3)


@pytest.mark.parametrize("k", [0, 4, -1])
def test_top_k_out_of_range_raises(k):
    with pytest.raises(ValueError, match=rf"k must lie in \[1, C\] = \[1, 3\], got k = {k}"):
        fm.top_k_accuracy(_P, _T, k)


@pytest.mark.parametrize("metric", [fm.precision, fm.recall, fm.f1])
def test_bad_average_raises(metric):
    with pytest.raises(
        ValueError, match="average must be 'macro', 'micro' or None, got 'weighted'"
    ):
        metric(_P, _T, average="weighted")


def test_bad_input_shape_raises():
    with pytest.raises(ValueError, match=r"scores \(N, C\) or class indices \(N,\)"):
        fm.accuracy(_P[None], _T)
    with pytest.raises(TypeError, match="1-d input must be integer class indices"):
        fm.accuracy(_P[:, 0], _T)
    with pytest.raises(ValueError, match="empty batch"):
        fm.accuracy(_P[:0], _T[:0])
