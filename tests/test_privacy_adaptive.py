"""DP-SGD with adaptive clipping: parity with Opacus's AdaClipDPOptimizer, properties, errors.

Parity runs the same float64 network, data and SGD-with-momentum in fdl and in
Opacus (``make_private(clipping="adaptive")``) for several steps and compares
the clip-norm trajectory and the params. Opacus draws its noise from a torch
generator and fdl from its keys, so the Opacus run gets fdl's draws: the test
replaces Opacus's ``_generate_noise`` (in its adaptive-clipping module) by one
returning ``std · z`` with ``z`` the standard normals fdl draws from the step's
key (zeros with the noise off). Everything else — the clip factors, the
unclipped count, Opacus's own adjusted noise multiplier and noise scaling, the
geometric update, the clamp, the optimizer — is Opacus's code. Opacus draws the
count noise in float32 (its reference tensor is ``unclipped_num.float()``),
which rounds its clip norm to float32 every step; the injected noise is
float64, so the comparison runs in float64 at 1e-10. One run with Opacus
untouched (noise off) checks the same trajectory at float32's tolerance.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fdl
from fdl import privacy

# ---------------------------------------------------------------------------
# the network (a torch module and the same function for fdl) and the data
# ---------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _loss(p, x, y):
    h = torch.tanh(F.conv2d(x, p["conv"]["weight"], p["conv"]["bias"], padding=1))
    return F.cross_entropy(F.linear(h.flatten(1), p["fc"]["weight"], p["fc"]["bias"]), y)


def _params(dtype=torch.float64):
    torch.manual_seed(0)
    net = _Net().to(dtype)
    return fdl.tree.from_flat_dict({k: v.detach().clone() for k, v in net.state_dict().items()})


def _batch(rows, seed, dtype=torch.float64):
    """Examples of very different scales, so some gradients are clipped and some are not."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1.5, 1.0, rows, dtype=dtype)[torch.randperm(rows, generator=g)]
    x = torch.randn(rows, 1, 4, 4, generator=g, dtype=dtype) * scale.reshape(-1, 1, 1, 1)
    return x, torch.randint(0, 4, (rows,), generator=g)


class Case(NamedTuple):
    sigma: float  # noise_multiplier
    sigma_b: float  # unclipped_num_std (fdl's; Opacus needs > sigma / 2 even at sigma = 0)
    rows: int  # rows in each batch given to fdl
    masked: bool  # a Poisson-style mask with exactly B_e included rows


B_E, STEPS, LR = 8, 5, 0.2
GAMMA, ETA, C0, C_MIN, C_MAX = 0.4, 0.3, 2.0, 0.05, 20.0
# Opacus's names for target_quantile, clip_lr, max_clip and min_clip
OPACUS_RULE = {
    "target_unclipped_quantile": GAMMA,
    "clipbound_learning_rate": ETA,
    "max_clipbound": C_MAX,
    "min_clipbound": C_MIN,
}

CASES = {
    "noise_off": Case(0.0, 0.0, B_E, False),
    "noise_off_masked": Case(0.0, 0.0, B_E + 3, True),
    "noise_on": Case(0.8, 1.5, B_E, False),
    "noise_on_masked": Case(0.8, 1.5, B_E + 3, True),
}


def _batches(case):
    out = []
    for t in range(STEPS):
        x, y = _batch(case.rows, seed=10 + t)
        mask = None
        if case.masked:  # B_E rows included, at places that change from step to step
            mask = torch.zeros(case.rows, dtype=torch.bool)
            mask[torch.randperm(case.rows, generator=torch.Generator().manual_seed(t))[:B_E]] = True
        out.append((x, y, mask))
    return out


def _keys():
    return [fdl.random.fold_in(fdl.random.key(7), t) for t in range(STEPS)]


def _fdl_noise(key, params):
    """The standard normals fdl's step draws from ``key`` (see adaptive_dp_grads)."""
    k_grad, k_b = fdl.random.split(key)
    z = privacy.add_noise(fdl.tree.zeros_like(params), k_grad, 1.0, 1.0)
    return fdl.tree.to_flat_dict(z), fdl.random.normal(k_b, (), dtype=torch.float64)


def _run_fdl(case, *, method="auto"):
    params = _params()
    opt = fdl.optim.sgd(lr=LR, momentum=0.9)
    step = privacy.make_adaptive_dp_train_step(
        _loss,
        opt,
        noise_multiplier=case.sigma,
        target_quantile=GAMMA,
        clip_lr=ETA,
        expected_batch_size=B_E,
        unclipped_num_std=case.sigma_b,
        min_clip=C_MIN,
        max_clip=C_MAX,
        method=method,
    )
    state, clip = opt.init(params), privacy.init_adaptive_clip(C0)
    clips = []
    for (x, y, mask), key in zip(_batches(case), _keys(), strict=True):
        params, state, clip, _ = step(params, state, clip, key, x, y, mask=mask)
        clips.append(clip.clip)
    return torch.stack(clips), fdl.tree.to_flat_dict(params)


def _run_opacus(case, monkeypatch, *, inject=True):
    from opacus import PrivacyEngine
    from opacus.optimizers import adaclipoptimizer

    torch.manual_seed(0)
    net = _Net().double()
    names = [n for n, _ in net.named_parameters()]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.zeros(B_E, 1)), batch_size=B_E
    )
    sigma_b = case.sigma_b if case.sigma > 0 else 1e-200  # Opacus needs sigma < 2 sigma_b
    module, dp_opt, _ = PrivacyEngine().make_private(
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9),
        data_loader=loader,
        noise_multiplier=case.sigma,
        max_grad_norm=C0,
        clipping="adaptive",
        unclipped_num_std=sigma_b,
        poisson_sampling=False,
        **OPACUS_RULE,
    )
    assert type(dp_opt) is adaclipoptimizer.AdaClipDPOptimizer
    assert dp_opt.expected_batch_size == B_E
    queue: list[tuple[str, torch.Tensor]] = []
    stds: list[tuple[str, float]] = []

    def injected(std, reference, generator=None, secure_mode=False):
        name, z = queue.pop(0)
        assert tuple(reference.shape) == tuple(z.shape), name
        stds.append((name, float(std)))
        return std * z

    if inject:
        monkeypatch.setattr(adaclipoptimizer, "_generate_noise", injected)
    clips, grad_stds = [], []
    params0 = _params()
    for (x, y, mask), key in zip(_batches(case), _keys(), strict=True):
        z, z_b = _fdl_noise(key, params0)
        if case.sigma == 0:  # fdl draws nothing with the noise off
            z, z_b = {n: torch.zeros_like(t) for n, t in z.items()}, torch.zeros(())
        queue[:] = [(n, z[n]) for n in names] + [("count", z_b.to(torch.float64))]
        stds.clear()
        c_t = float(dp_opt.max_grad_norm)
        dp_opt.zero_grad()
        xs, ys = (x, y) if mask is None else (x[mask], y[mask])
        F.cross_entropy(module(xs), ys).backward()
        dp_opt.step()
        clips.append(torch.as_tensor(dp_opt.max_grad_norm, dtype=torch.float64).clone())
        grad_stds.append([s / c_t for n, s in stds if n != "count"])
        assert not inject or not queue  # every draw was one of fdl's
    params = {n: p.detach() for n, p in net.named_parameters()}
    return torch.stack(clips), params, grad_stds


# ---------------------------------------------------------------------------
# parity with Opacus
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_matches_opacus_adaclip(name, monkeypatch):
    pytest.importorskip("opacus")
    case = CASES[name]
    want_clips, want_params, grad_stds = _run_opacus(case, monkeypatch)
    clips, params = _run_fdl(case)
    torch.testing.assert_close(clips, want_clips, rtol=1e-10, atol=0)
    assert len(set(clips.tolist())) == STEPS  # the norm really moved every step
    for path, want in want_params.items():
        torch.testing.assert_close(params[path], want, rtol=1e-10, atol=1e-12, msg=path)
    # Opacus's adjusted multiplier (std / C of every gradient draw) is σ_grad
    sigma_grad = privacy.gradient_noise_multiplier(case.sigma, case.sigma_b)
    for per_step in grad_stds:
        assert per_step and all(math.isclose(s, sigma_grad, rel_tol=1e-12) for s in per_step)


def test_matches_stock_opacus_at_float32_clip(monkeypatch):
    """Opacus untouched: its clip norm is rounded to float32 each step (2^-24 relative),
    so over 5 steps the trajectory and the params agree to 1e-6 relative."""
    pytest.importorskip("opacus")
    case = CASES["noise_off"]
    want_clips, want_params, _ = _run_opacus(case, monkeypatch, inject=False)
    clips, params = _run_fdl(case)
    torch.testing.assert_close(clips, want_clips, rtol=1e-6, atol=0)
    for path, want in want_params.items():
        torch.testing.assert_close(params[path], want, rtol=1e-6, atol=1e-9, msg=path)


def test_sigma_b_rule_matches_opacus():
    """Both refuse 2σ_b <= σ; fdl alone accepts σ = σ_b = 0 (no privacy, no noise)."""
    pytest.importorskip("opacus")
    from opacus.optimizers import AdaClipDPOptimizer

    def opacus(sigma, sigma_b):
        net = _Net()
        return AdaClipDPOptimizer(
            torch.optim.SGD(net.parameters(), lr=0.1),
            noise_multiplier=sigma,
            target_unclipped_quantile=0.5,
            clipbound_learning_rate=0.2,
            max_clipbound=10.0,
            min_clipbound=0.1,
            unclipped_num_std=sigma_b,
            max_grad_norm=1.0,
            expected_batch_size=8,
        )

    for sigma, sigma_b in [(1.0, 0.5), (1.0, 0.3), (2.0, 0.0)]:
        with pytest.raises(ValueError, match="2 \\* unclipped_num_std"):
            opacus(sigma, sigma_b)
        with pytest.raises(ValueError, match="unclipped_num_std must be > noise_multiplier / 2"):
            privacy.gradient_noise_multiplier(sigma, sigma_b)
    opacus(1.0, 0.51)
    assert privacy.gradient_noise_multiplier(1.0, 0.51) > 1.0
    with pytest.raises(ValueError):
        opacus(0.0, 0.0)
    assert privacy.gradient_noise_multiplier(0.0, 0.0) == 0.0


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------


def _grads_fn(**over: Any):
    kwargs = {
        "noise_multiplier": 0.0,
        "target_quantile": 0.5,
        "clip_lr": 0.2,
        "expected_batch_size": 6,
        "unclipped_num_std": 0.0,
        **over,
    }
    return privacy.adaptive_dp_grads(_loss, **kwargs)


def _norms(params, x, y):
    grads = fdl.per_sample_grads(_loss)(params, x, y)
    return torch.stack([fdl.tree.global_norm(g) for g in fdl.tree.unstack(grads)])


@pytest.mark.parametrize("method", ["auto", "vmap"])
def test_clip_rises_when_all_clipped_and_falls_when_none(method):
    params, (x, y) = _params(), _batch(6, seed=1)
    norms = _norms(params, x, y)
    fn = _grads_fn(method=method, clip_lr=0.3, target_quantile=0.4)
    low, high = float(norms.min()) / 2, float(norms.max()) * 2
    _, s, _ = fn(params, privacy.init_adaptive_clip(low), fdl.random.key(0), x, y)
    assert float(s.clip) == pytest.approx(low * math.exp(0.3 * 0.4), rel=1e-12)  # b = 0
    _, s, _ = fn(params, privacy.init_adaptive_clip(high), fdl.random.key(0), x, y)
    assert float(s.clip) == pytest.approx(high * math.exp(-0.3 * 0.6), rel=1e-12)  # b = 1


def test_quantile_one_grows_and_zero_shrinks():
    params, (x, y) = _params(), _batch(6, seed=2)
    for quantile, sign in ((1.0, 1), (0.0, -1)):
        fn = _grads_fn(target_quantile=quantile)
        c0 = float(_norms(params, x, y).median())
        state, trace = privacy.init_adaptive_clip(c0), []
        for t in range(4):
            _, state, _ = fn(params, state, fdl.random.key(t), x, y)
            trace.append(float(state.clip))
        steps = [sign * (b - a) for a, b in zip([c0, *trace], trace, strict=False)]
        # monotone; strictly while some example is on the other side of C
        assert steps[0] > 0 and all(d >= 0 for d in steps), (quantile, trace)


def test_clip_is_clamped_to_its_bounds():
    params, (x, y) = _params(), _batch(6, seed=1)
    norms = _norms(params, x, y)
    low, high = float(norms.min()) / 2, float(norms.max()) * 2
    with pytest.raises(ValueError, match="max_clip must be > min_clip"):
        _grads_fn(clip_lr=1.0, max_clip=low * 1.01, min_clip=high * 0.99)
    fn = _grads_fn(clip_lr=1.0, max_clip=low * 1.01)
    _, s, _ = fn(params, privacy.init_adaptive_clip(low), fdl.random.key(0), x, y)
    assert float(s.clip) == low * 1.01  # exp(0.5) would overshoot
    fn = _grads_fn(clip_lr=1.0, min_clip=high * 0.99)
    _, s, _ = fn(params, privacy.init_adaptive_clip(high), fdl.random.key(0), x, y)
    assert float(s.clip) == high * 0.99


def test_zero_clip_lr_is_dp_sgd_with_the_adjusted_noise():
    """η_C = 0 keeps C, and the gradient is dp_grads' with σ_grad and the key's first half."""
    params, (x, y) = _params(), _batch(6, seed=3)
    sigma, sigma_b, c = 0.9, 0.7, 0.3
    fn = _grads_fn(noise_multiplier=sigma, unclipped_num_std=sigma_b, clip_lr=0.0)
    key = fdl.random.key(5)
    grads, s, loss = fn(params, privacy.init_adaptive_clip(c), key, x, y)
    assert float(s.clip) == c
    dp = privacy.dp_grads(
        _loss,
        noise_multiplier=privacy.gradient_noise_multiplier(sigma, sigma_b),
        max_grad_norm=c,
        expected_batch_size=6,
    )
    want, want_loss = dp(params, fdl.random.split(key)[0], x, y)
    for a, b in zip(fdl.tree.leaves(grads), fdl.tree.leaves(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, want_loss)


def test_masked_rows_count_for_nothing():
    params, (x, y) = _params(), _batch(9, seed=4)
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    fn = _grads_fn(noise_multiplier=0.5, unclipped_num_std=1.0)
    clip = privacy.init_adaptive_clip(float(_norms(params, x, y).median()))
    g, s, _ = fn(params, clip, fdl.random.key(1), x, y, mask=mask)
    g_in, s_in, _ = fn(params, clip, fdl.random.key(1), x[mask], y[mask])
    torch.testing.assert_close(s.clip, s_in.clip, rtol=1e-12, atol=0)
    for a, b in zip(fdl.tree.leaves(g), fdl.tree.leaves(g_in), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_step_is_pure_and_returns_aux():
    params, (x, y) = _params(), _batch(6, seed=5)
    mask = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
    opt = fdl.optim.adam(lr=0.1)
    state, clip, key = opt.init(params), privacy.init_adaptive_clip(0.4), fdl.random.key(2)
    inputs = (params, state, clip, key, x, y, mask)
    before = fdl.tree.map(torch.clone, inputs)
    step = privacy.make_adaptive_dp_train_step(
        lambda p, x, y: (_loss(p, x, y), {"n": x.shape[0]}),
        opt,
        noise_multiplier=1.0,
        target_quantile=0.5,
        clip_lr=0.2,
        expected_batch_size=5,
        unclipped_num_std=1.0,
        has_aux=True,
    )
    new, _, new_clip, loss, aux = step(params, state, clip, key, x, y, mask=mask)
    assert aux == {"n": 6} and loss.shape == ()
    for a, b in zip(fdl.tree.leaves(inputs), fdl.tree.leaves(before), strict=True):
        assert torch.equal(a, b)
    assert not fdl.tree.allclose(new, params) and float(new_clip.clip) != 0.4


def _linear_loss(p, x, y):
    return F.cross_entropy(F.linear(x.flatten(1), p["weight"], p["bias"]), y)


def test_compiled_step_traces_once_as_the_clip_moves():
    from torch._dynamo.testing import CompileCounter

    params = fdl.nn.Linear(16, 4).init(fdl.random.key(0))
    opt = fdl.optim.sgd(lr=0.1)
    kwargs = {
        "noise_multiplier": 1.0,
        "target_quantile": 0.5,
        "clip_lr": 0.5,
        "expected_batch_size": 6,
        "unclipped_num_std": 1.0,
    }
    counter = CompileCounter()
    step = privacy.make_adaptive_dp_train_step(
        _linear_loss, opt, **kwargs, compile={"backend": counter}
    )
    eager = privacy.make_adaptive_dp_train_step(_linear_loss, opt, **kwargs)
    state, clip = opt.init(params), privacy.init_adaptive_clip(0.3)
    seen = set()
    for t in range(3):
        x, y = _batch(8, seed=20 + t, dtype=torch.float32)
        mask = torch.arange(8) < 5 + t % 2
        out = step(params, state, clip, fdl.random.key(t), x, y, mask=mask)
        ref = eager(params, state, clip, fdl.random.key(t), x, y, mask=mask)
        torch.testing.assert_close(out[2].clip, ref[2].clip, rtol=1e-6, atol=0)
        for a, b in zip(fdl.tree.leaves(out[0]), fdl.tree.leaves(ref[0]), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        params, state, clip = out[0], out[1], out[2]
        seen.add(float(clip.clip))
    assert len(seen) == 3
    assert counter.frame_count == 1


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

BAD = [
    ({"target_quantile": -0.1}, r"target_quantile must be in \[0, 1\]"),
    ({"target_quantile": 1.5}, r"target_quantile must be in \[0, 1\]"),
    ({"clip_lr": -0.1}, "clip_lr must be a finite number >= 0"),
    ({"unclipped_num_std": -1.0}, "unclipped_num_std must be a finite number >= 0"),
    ({"noise_multiplier": 1.0, "unclipped_num_std": 0.5}, "unclipped_num_std must be > "),
    ({"noise_multiplier": -1.0}, "noise_multiplier must be"),
    ({"expected_batch_size": 0}, "expected_batch_size must be > 0"),
    ({"min_clip": -1.0}, "min_clip must be a finite number >= 0"),
    ({"min_clip": 2.0, "max_clip": 2.0}, "max_clip must be > min_clip"),
    ({"method": "loop"}, "method must be one of"),
]


@pytest.mark.parametrize(("override", "match"), BAD)
def test_bad_arguments(override, match):
    kwargs = {
        "noise_multiplier": 1.0,
        "target_quantile": 0.5,
        "clip_lr": 0.2,
        "expected_batch_size": 4,
        "unclipped_num_std": 2.0,
        **override,
    }
    with pytest.raises(ValueError, match=match):
        privacy.adaptive_dp_grads(_loss, **kwargs)
    with pytest.raises(ValueError, match=match):
        privacy.make_adaptive_dp_train_step(_loss, fdl.optim.sgd(lr=0.1), **kwargs)


def test_bad_state_and_inputs():
    for c in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="initial_clip must be a positive finite number"):
            privacy.init_adaptive_clip(c)
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        privacy.init_adaptive_clip(1.0, dtype=torch.int64)
    params, (x, y) = _params(), _batch(4, seed=0)
    fn = _grads_fn(expected_batch_size=4)
    with pytest.raises(TypeError, match="clip_state must be an AdaptiveClipState"):
        fn(params, 1.0, fdl.random.key(0), x, y)
    with pytest.raises(ValueError, match="clip_state.clip must be a 0-d floating tensor"):
        fn(params, privacy.AdaptiveClipState(torch.ones(1)), fdl.random.key(0), x, y)
    with pytest.raises(ValueError, match=r"mask must have shape \(4,\)"):
        fn(params, privacy.init_adaptive_clip(1.0), fdl.random.key(0), x, y, mask=torch.ones(3))
    with pytest.raises(TypeError, match="target_unclipped_quantile"):  # Opacus's name
        privacy.make_adaptive_dp_train_step(
            _loss, fdl.optim.sgd(lr=0.1), target_unclipped_quantile=0.5, clip_lr=0.2
        )
    with pytest.raises(TypeError, match="make_adaptive_dp_train_step: optimizer must be"):
        privacy.make_adaptive_dp_train_step(
            _loss,
            object(),
            noise_multiplier=0.0,
            target_quantile=0.5,
            clip_lr=0.2,
            expected_batch_size=4,
            unclipped_num_std=0.0,
        )
