"""DP-SGD (clipping, noise, Poisson batches, compiled step) and the RDP accountant."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import fdl
from fdl import privacy

# ---------------------------------------------------------------------------
# a small model shared by the tests
# ---------------------------------------------------------------------------


def _params(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return {
        "conv": {
            "weight": torch.randn(3, 1, 3, 3, generator=g, dtype=dtype),
            "bias": torch.zeros(3, dtype=dtype),
        },
        "fc": {
            "weight": torch.randn(4, 3 * 4 * 4, generator=g, dtype=dtype) * 0.3,
            "bias": torch.zeros(4, dtype=dtype),
        },
    }


def _batch(n, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g, dtype=dtype) * 3, torch.arange(n) % 4


def _loss(p, x, y):
    h = torch.tanh(F.conv2d(x, p["conv"]["weight"], p["conv"]["bias"], padding=1))
    return F.cross_entropy(F.linear(h.flatten(1), p["fc"]["weight"], p["fc"]["bias"]), y)


def _reference_dp_sum(params, x, y, clip, mask=None):
    """Loop definition: Σ_i m_i · clip(grad_i)."""
    total = fdl.tree.zeros_like(params)
    for i in range(x.shape[0]):
        g = torch.func.grad(_loss)(params, x[i : i + 1], y[i : i + 1])
        norm = float(fdl.tree.global_norm(g))
        f = min(1.0, clip / (norm + 1e-6)) * (1.0 if mask is None else float(mask[i]))
        total = fdl.tree.add(total, fdl.tree.scale(g, f))
    return total


# ---------------------------------------------------------------------------
# clipping and the private gradient
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("clip", [0.05, 0.5, 100.0])
def test_clipping_bounds_and_keeps_small(clip):
    params, (x, y) = _params(), _batch(9)
    grads = fdl.per_sample_grads(_loss)(params, x, y)
    norms = torch.stack([fdl.tree.global_norm(t) for t in fdl.tree.unstack(grads)])
    clipped = privacy.clip_per_sample(grads, clip)
    new = torch.stack([fdl.tree.global_norm(t) for t in fdl.tree.unstack(clipped)])
    assert bool((new <= clip).all())
    small = norms < clip
    for g, c in zip(fdl.tree.leaves(grads), fdl.tree.leaves(clipped), strict=True):
        # below C: unchanged up to the 1e-6 guard in the factor C / (norm + 1e-6)
        torch.testing.assert_close(c[small], g[small], rtol=1e-6 / clip, atol=0)


@pytest.mark.parametrize("method", ["auto", "vmap"])
@pytest.mark.parametrize("masked", [False, True])
def test_dp_grads_without_noise_match_loop(method, masked):
    params, (x, y) = _params(), _batch(10)
    clip, b_e = 0.3, 8.0
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool) if masked else None
    fn = privacy.dp_grads(
        _loss, noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=b_e, method=method
    )
    grads, loss = fn(params, fdl.random.key(0), x, y, mask=mask)
    want = fdl.tree.scale(_reference_dp_sum(params, x, y, clip, mask), 1 / b_e)
    for a, e in zip(fdl.tree.leaves(grads), fdl.tree.leaves(want), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, _loss(params, x, y))


def test_noise_moments_match_sigma_c():
    # zero gradient: the private gradient is pure noise σ·C·z / B_e
    sigma, clip, b_e = 1.3, 0.7, 5.0
    params = {"w": torch.zeros(200, 200)}
    loss = lambda p, x: (F.linear(x, p["w"]) * 0.0).sum()  # noqa: E731
    fn = privacy.dp_grads(loss, noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=b_e)
    g, _ = fn(params, fdl.random.key(3), torch.randn(4, 200))
    z = g["w"] * b_e
    n = z.numel()
    assert abs(float(z.mean())) < 4 * sigma * clip / math.sqrt(n)
    assert abs(float(z.std()) / (sigma * clip) - 1) < 4 / math.sqrt(2 * n)
    # the same key gives the same noise; another key different noise
    g2, _ = fn(params, fdl.random.key(3), torch.randn(4, 200))
    g3, _ = fn(params, fdl.random.key(4), torch.randn(4, 200))
    assert torch.equal(g["w"], g2["w"]) and not torch.equal(g["w"], g3["w"])


def test_dp_step_is_pure_and_updates():
    params, (x, y) = _params(), _batch(6)
    before = fdl.tree.map(torch.clone, params)
    opt = fdl.optim.sgd(lr=0.1, momentum=0.9)
    step = privacy.make_dp_train_step(
        _loss, opt, noise_multiplier=0.0, max_grad_norm=1.0, expected_batch_size=6
    )
    new, state, loss = step(params, opt.init(params), fdl.random.key(0), x, y)
    assert fdl.tree.allclose(params, before, rtol=0, atol=0)
    want = fdl.tree.scale(_reference_dp_sum(params, x, y, 1.0), -0.1 / 6)
    for n_, p, w in zip(
        fdl.tree.leaves(new), fdl.tree.leaves(params), fdl.tree.leaves(want), strict=True
    ):
        torch.testing.assert_close(n_ - p, w, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# Poisson batches and the compiled step
# ---------------------------------------------------------------------------


def test_poisson_sample_shape_and_rate():
    n, q, size = 2000, 0.05, 160
    counts = []
    for s in range(20):
        idx, mask = privacy.poisson_sample(fdl.random.key(s), n, q, size)
        assert idx.shape == (size,) and mask.shape == (size,) and mask.dtype == torch.bool
        k = int(mask.sum())
        assert bool(mask[:k].all()) and not bool(mask[k:].any())  # included rows first
        assert len(set(idx.tolist())) == size  # no repeats
        counts.append(k)
    mean = sum(counts) / len(counts)
    assert abs(mean - n * q) < 4 * math.sqrt(n * q / len(counts))
    assert len(set(counts)) > 1  # the batch size varies


def test_compiled_step_does_not_recompile_across_poisson_batches():
    from torch._dynamo.testing import CompileCounter

    n, q, size = 64, 0.25, 32
    gx, gy = _batch(n, torch.float32)
    params = _params(torch.float32)
    opt = fdl.optim.adam(lr=1e-2)
    counter = CompileCounter()
    step = privacy.make_dp_train_step(
        _loss,
        opt,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=n * q,
        compile={"backend": counter},
    )
    eager = privacy.make_dp_train_step(
        _loss, opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=n * q
    )
    state = opt.init(params)
    sizes = set()
    for s in range(3):
        k_batch, k_noise = fdl.random.split(fdl.random.key(s))
        idx, mask = privacy.poisson_sample(k_batch, n, q, size)
        sizes.add(int(mask.sum()))
        out = step(params, state, k_noise, gx[idx], gy[idx], mask=mask)
        ref = eager(params, state, k_noise, gx[idx], gy[idx], mask=mask)
        for a, b in zip(fdl.tree.leaves(out[0]), fdl.tree.leaves(ref[0]), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        params, state = out[0], out[1]
    assert len(sizes) > 1
    assert counter.frame_count == 1


# ---------------------------------------------------------------------------
# the accountant
# ---------------------------------------------------------------------------

GRID_Q = [1e-3, 256 / 60000, 0.05, 1.0]
GRID_SIGMA = [0.8, 1.1, 3.0]
GRID_STEPS = [1, 1000]
GRID_DELTA = [1e-5]


def _opacus_epsilon(steps, sigma, q, delta):
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(sigma, q, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optimal order at the edge of the grid
        return acc.get_epsilon(delta=delta)


@pytest.mark.parametrize("q", GRID_Q)
@pytest.mark.parametrize("sigma", GRID_SIGMA)
def test_epsilon_matches_opacus(q, sigma):
    pytest.importorskip("opacus")
    for steps in GRID_STEPS:
        for delta in GRID_DELTA:
            want = _opacus_epsilon(steps, sigma, q, delta)
            got = privacy.epsilon(steps, sigma, q, delta)
            assert math.isclose(got, want, rel_tol=1e-6), (steps, sigma, q, delta, got, want)


def test_noise_multiplier_for_inverts_epsilon():
    pytest.importorskip("opacus")
    from opacus.accountants.utils import get_noise_multiplier

    q, steps, delta = 256 / 60000, 2000, 1e-5
    for target in (1.0, 3.0):
        sigma = privacy.noise_multiplier_for(target, steps, q, delta, rtol=1e-7)
        assert privacy.epsilon(steps, sigma, q, delta) <= target
        assert privacy.epsilon(steps, sigma * (1 - 1e-6), q, delta) > target
    # Opacus stops within 0.01 of the target in ε, so its σ is at least ours
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_noise_multiplier(
            target_epsilon=3.0, target_delta=delta, sample_rate=q, steps=steps
        )
    assert sigma <= theirs * (1 + 1e-9)
    assert math.isclose(sigma, theirs, rel_tol=0.02)


def test_epsilon_edge_cases():
    assert privacy.epsilon(0, 1.0, 0.1, 1e-5) == 0.0
    assert privacy.epsilon(10, 0.0, 0.1, 1e-5) == math.inf
    assert privacy.epsilon(10, 1.0, 0.1, 1e-5) < privacy.epsilon(20, 1.0, 0.1, 1e-5)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

BAD_DP = [
    ({"max_grad_norm": 0.0}, "max_grad_norm must be a positive"),
    ({"max_grad_norm": -1.0}, "max_grad_norm must be a positive"),
    ({"noise_multiplier": -0.1}, "noise_multiplier must be"),
    ({"expected_batch_size": 0}, "expected_batch_size must be > 0"),
]


@pytest.mark.parametrize(("override", "match"), BAD_DP)
def test_bad_dp_arguments(override, match):
    kwargs = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "expected_batch_size": 4, **override}
    with pytest.raises(ValueError, match=match):
        privacy.dp_grads(_loss, **kwargs)
    with pytest.raises(ValueError, match=match):
        privacy.make_dp_train_step(_loss, fdl.optim.sgd(lr=0.1), **kwargs)


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5])
def test_bad_sample_rate(q):
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        privacy.epsilon(10, 1.0, q, 1e-5)
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        privacy.noise_multiplier_for(1.0, 10, q, 1e-5)
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        privacy.poisson_sample(fdl.random.key(0), 100, q, 10)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5])
def test_bad_delta(delta):
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        privacy.epsilon(10, 1.0, 0.1, delta)


def test_bad_other_inputs():
    with pytest.raises(ValueError, match="noise_multiplier must be >= 0"):
        privacy.epsilon(10, -1.0, 0.1, 1e-5)
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        privacy.epsilon(-1, 1.0, 0.1, 1e-5)
    with pytest.raises(ValueError, match="target_epsilon must be > 0"):
        privacy.noise_multiplier_for(0.0, 10, 0.1, 1e-5)
    with pytest.raises(ValueError, match="budget is too small"):
        privacy.noise_multiplier_for(1e-9, 10**6, 1.0, 1e-5)
    with pytest.raises(ValueError, match="max_size must be in"):
        privacy.poisson_sample(fdl.random.key(0), 100, 0.1, 0)
    params, (x, y) = _params(), _batch(4)
    fn = privacy.dp_grads(_loss, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4)
    with pytest.raises(ValueError, match="mask must have shape"):
        fn(params, fdl.random.key(0), x, y, mask=torch.ones(3, dtype=torch.bool))
