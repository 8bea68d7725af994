"""DP-SGD extensions: virtual steps (micro-batches), per-layer clipping, Poisson overflow.

Per-layer clipping is compared with Opacus's ``clipping="per_layer"``; virtual steps with
the single large-batch step (same key); peak memory from torch.profiler's allocation events.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from test_privacy import _batch, _loss, _params  # the small conv model: {"conv": .., "fc": ..}

import fdl
from fdl import distributed, privacy


def _torch_model(params):
    layers = {
        "conv": torch.nn.Conv2d(1, 3, 3, padding=1),
        "tanh": torch.nn.Tanh(),
        "flatten": torch.nn.Flatten(),
        "fc": torch.nn.Linear(48, 4),
    }
    model = torch.nn.Sequential(OrderedDict(layers)).double()
    model.load_state_dict(fdl.nn.state_dict(params))
    return model


# per-layer bounds C_l, in torch's parameter order (model.parameters())
TORCH_ORDER = ("conv.weight", "conv.bias", "fc.weight", "fc.bias")
BOUNDS = {"conv.weight": 0.4, "conv.bias": 0.05, "fc.weight": 0.3, "fc.bias": 0.08}

# the clipping settings every generic property runs over: name -> max_grad_norm
CLIPPING = {
    "flat": 0.3,
    "per_layer_tree": fdl.tree.from_flat_dict(BOUNDS),
    "per_layer_sequence": [BOUNDS[k] for k in fdl.tree.paths(_params())],  # flattening order
}
MASK = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)


def _close(got, want, rtol, atol):
    for a, e in zip(fdl.tree.leaves(got), fdl.tree.leaves(want), strict=True):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


def _per_layer_reference(params, x, y, bounds, mask=None):
    """Loop definition: Σ_i m_i · (each leaf l of grad_i clipped to C_l on its own)."""
    total = fdl.tree.zeros_like(params)
    flat_bounds = fdl.tree.to_flat_dict(bounds)
    for i in range(x.shape[0]):
        g = fdl.tree.to_flat_dict(torch.func.grad(_loss)(params, x[i : i + 1], y[i : i + 1]))
        m = 1.0 if mask is None else float(mask[i])
        clipped = {
            k: v * min(1.0, flat_bounds[k] / (float(v.norm()) + 1e-6)) * m for k, v in g.items()
        }
        total = fdl.tree.add(total, fdl.tree.from_flat_dict(clipped))
    return total


# ---------------------------------------------------------------------------
# virtual steps: micro-batches summed, noised once
# ---------------------------------------------------------------------------


def _dp_kwargs(clip, **extra):
    return {"noise_multiplier": 1.3, "max_grad_norm": clip, "expected_batch_size": 8.0, **extra}


@pytest.mark.parametrize("clipping", list(CLIPPING))
@pytest.mark.parametrize("micro", [1, 4, 10, 64])
@pytest.mark.parametrize("masked", [False, True])
def test_micro_batches_equal_one_large_batch(clipping, micro, masked):
    params, (x, y) = _params(), _batch(10)
    mask = MASK if masked else None
    kwargs = _dp_kwargs(CLIPPING[clipping])
    key = fdl.random.key(5)
    want, want_loss = privacy.dp_grads(_loss, **kwargs)(params, key, x, y, mask=mask)
    got, loss = privacy.dp_grads(_loss, micro_batch_size=micro, **kwargs)(
        params, key, x, y, mask=mask
    )
    _close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=0)  # a mean-reduced loss


def test_micro_batches_return_aux_per_chunk():
    params, (x, y) = _params(), _batch(10)

    def loss_aux(p, x, y):
        return _loss(p, x, y), {"rows": torch.tensor(x.shape[0])}

    fn = privacy.dp_grads(loss_aux, has_aux=True, micro_batch_size=4, **_dp_kwargs(0.3))
    _, _, aux = fn(params, fdl.random.key(0), x, y)
    assert [int(a["rows"]) for a in aux] == [4, 4, 2]


@pytest.fixture(scope="module")
def compiled_micro_step():
    """A compiled DP step over micro-batches of 4 rows (a padded batch of 10), and its counter."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    opt = fdl.optim.adam(lr=1e-2)
    step = privacy.make_dp_train_step(
        _loss,
        opt,
        micro_batch_size=4,
        compile={"backend": counter},
        **_dp_kwargs(CLIPPING["per_layer_tree"]),
    )
    return step, opt, counter


def test_compiled_micro_step_equals_large_batch_and_compiles_once(compiled_micro_step):
    step, opt, counter = compiled_micro_step
    eager = privacy.make_dp_train_step(_loss, opt, **_dp_kwargs(CLIPPING["per_layer_tree"]))
    params, (x, y) = _params(), _batch(10)
    state = opt.init(params)
    for s in range(3):
        key = fdl.random.key(s)
        mask = MASK.roll(s)
        got = step(params, state, key, x, y, mask=mask)
        want = eager(params, state, key, x, y, mask=mask)
        _close(got[:2], want[:2], rtol=1e-12, atol=1e-12)
        params, state = want[0], want[1]
    assert counter.frame_count == 1


MEM_BATCH = 512


def _memory_workload(micro):
    """One eager DP step at batch 512 on a conv model, float32: ``() -> None``."""
    g = torch.Generator().manual_seed(0)
    params = {
        "conv": {"weight": torch.randn(16, 1, 3, 3, generator=g), "bias": torch.zeros(16)},
        "fc": {
            "weight": torch.randn(10, 16 * 28 * 28, generator=g) * 0.01,
            "bias": torch.zeros(10),
        },
    }
    x = torch.randn(MEM_BATCH, 1, 28, 28, generator=g)
    y = torch.arange(MEM_BATCH) % 10

    def loss_fn(p, x, y):
        h = torch.tanh(F.conv2d(x, p["conv"]["weight"], p["conv"]["bias"], padding=1))
        return F.cross_entropy(F.linear(h.flatten(1), p["fc"]["weight"], p["fc"]["bias"]), y)

    opt = fdl.optim.sgd(lr=0.1)
    step = privacy.make_dp_train_step(
        loss_fn,
        opt,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=MEM_BATCH,
        micro_batch_size=micro,
    )
    state = opt.init(params)
    return lambda: step(params, state, fdl.random.key(0), x, y)


def _peak_allocated_mb(fn):
    """Peak of the bytes live in torch's CPU allocator during ``fn()``, over those at its start.

    From the allocation and free events of ``torch.profiler`` (``profile_memory=True``),
    in time order: what the step itself allocates, independent of how the C library
    maps memory (a peak-RSS probe in a child process read the same within 1 %).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = prof.profiler.kineto_results.events()
    changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def test_micro_batches_keep_peak_memory_at_the_micro_batch():
    peaks = {}
    for micro in (64, MEM_BATCH):
        fn = _memory_workload(micro)
        fn()  # lazy initialisation outside the measurement
        peaks[micro] = _peak_allocated_mb(fn)
    small, full = peaks[64], peaks[MEM_BATCH]
    print(f"peak allocated: micro_batch_size=64 {small:.1f} MB, {MEM_BATCH} {full:.1f} MB")
    assert full > 20, full  # the probe sees the large batch's per-example state
    assert small < 0.25 * full, (small, full)  # 64/512 = 0.125 of the rows


# ---------------------------------------------------------------------------
# per-layer clipping against Opacus
# ---------------------------------------------------------------------------


def _opacus_step(params, x, y, bounds, sigma, seed=0):
    """One Opacus DPPerLayerOptimizer step (SGD, lr 1): ``params_before - params_after``."""
    opacus = pytest.importorskip("opacus")
    from torch.utils.data import DataLoader, TensorDataset

    model = _torch_model(params)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = DataLoader(TensorDataset(x, y), batch_size=x.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG and hook-mode notices
        model, opt, loader = opacus.PrivacyEngine().make_private(
            module=model,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=[bounds[k] for k in TORCH_ORDER],
            clipping="per_layer",
            poisson_sampling=False,
            noise_generator=torch.Generator().manual_seed(seed),
        )
        before = {k: v.detach().clone() for k, v in model._module.state_dict().items()}
        for bx, by in loader:
            opt.zero_grad()
            F.cross_entropy(model(bx), by).backward()
            opt.step()
    after = model._module.state_dict()
    return fdl.tree.from_flat_dict({k: before[k] - after[k] for k in before}), opt


@pytest.mark.parametrize("clipping", ["per_layer_tree", "per_layer_sequence"])
@pytest.mark.parametrize("method", ["auto", "vmap"])
def test_per_layer_clipping_matches_opacus_without_noise(clipping, method):
    params, (x, y) = _params(), _batch(10)
    want, opt = _opacus_step(params, x, y, BOUNDS, sigma=0.0)
    assert type(opt).__name__ == "DPPerLayerOptimizer"
    fn = privacy.dp_grads(
        _loss,
        noise_multiplier=0.0,
        max_grad_norm=CLIPPING[clipping],
        expected_batch_size=x.shape[0],
        method=method,
    )
    got, _ = fn(params, fdl.random.key(0), x, y)
    _close(got, want, rtol=1e-10, atol=1e-12)
    # the definition, and that per-layer is not the flat rule at C = ‖(C_l)‖
    ref = fdl.tree.scale(_per_layer_reference(params, x, y, CLIPPING["per_layer_tree"]), 0.1)
    _close(got, ref, rtol=1e-10, atol=1e-12)
    flat = privacy.dp_grads(
        _loss,
        noise_multiplier=0.0,
        max_grad_norm=math.sqrt(sum(c * c for c in BOUNDS.values())),
        expected_batch_size=x.shape[0],
    )(params, fdl.random.key(0), x, y)[0]
    assert not fdl.tree.allclose(got, flat, rtol=1e-3, atol=0)


def test_per_layer_noise_is_sigma_times_the_norm_of_the_bounds():
    """Known noise: fdl's noise is its key's draw times σ·‖(C_l)‖₂; Opacus's has that std.

    fdl: (noised − clean)·B_e equals σ·sqrt(Σ_l C_l²)·z with z = fdl.random.normal(key)
    exactly. Opacus: its per-layer optimizer's ``max_grad_norm`` is the same norm (to
    float32 rounding, as it computes it), and the std of its noise over 40 steps × 226
    coordinates is σ·‖(C_l)‖/B within 4 standard errors.
    """
    params, (x, y) = _params(), _batch(10)
    sigma, b = 1.7, x.shape[0]
    norm = math.sqrt(sum(c * c for c in BOUNDS.values()))
    key = fdl.random.key(9)
    kw = {"max_grad_norm": CLIPPING["per_layer_tree"], "expected_batch_size": b}
    noised, _ = privacy.dp_grads(_loss, noise_multiplier=sigma, **kw)(params, key, x, y)
    clean, _ = privacy.dp_grads(_loss, noise_multiplier=0.0, **kw)(params, key, x, y)
    leaves = fdl.tree.leaves(fdl.tree.sub(noised, clean))
    z = torch.cat([t.flatten() for t in leaves]) * b / (sigma * norm)
    torch.testing.assert_close(
        z, fdl.random.normal(key, (z.numel(),), dtype=torch.float64), rtol=1e-9, atol=1e-9
    )

    want_clean, opt = _opacus_step(params, x, y, BOUNDS, sigma=0.0)
    assert math.isclose(opt.max_grad_norm, norm, rel_tol=1e-6)
    draws = []
    for seed in range(40):
        delta, _ = _opacus_step(params, x, y, BOUNDS, sigma=sigma, seed=seed)
        noise = fdl.tree.sub(delta, want_clean)  # lr 1: the step is the gradient
        draws.append(torch.cat([t.flatten() for t in fdl.tree.leaves(noise)]))
    z = torch.cat(draws) * b / (sigma * norm)
    n = z.numel()
    assert abs(float(z.mean())) < 4 / math.sqrt(n)
    assert abs(float(z.std()) - 1.0) < 4 / math.sqrt(2 * n), float(z.std())


def _shared_loss(p, x):
    # the same (square) weight in two layer calls: its per-example gradient sums two parts
    h = torch.tanh(F.linear(x, p["w"], p["b"]))
    return F.linear(h, p["w"]).square().sum(1).mean()


def test_per_layer_clipping_of_a_parameter_shared_by_two_layers():
    g = torch.Generator().manual_seed(3)
    params = {
        "w": torch.randn(5, 5, generator=g, dtype=torch.float64),
        "b": torch.randn(5, generator=g, dtype=torch.float64),
    }
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    bounds = {"w": 0.5, "b": 0.2}
    kw = {"noise_multiplier": 0.0, "max_grad_norm": bounds, "expected_batch_size": 1.0}
    rules = privacy.dp_grads(_shared_loss, method="rules", **kw)(params, fdl.random.key(0), x)[0]
    vmap = privacy.dp_grads(_shared_loss, method="vmap", **kw)(params, fdl.random.key(0), x)[0]
    per_example = fdl.per_sample_grads(_shared_loss, method="vmap")(params, x)
    want = {
        k: sum(v[i] * min(1.0, bounds[k] / (float(v[i].norm()) + 1e-6)) for i in range(x.shape[0]))
        for k, v in per_example.items()
    }
    _close(rules, want, rtol=1e-10, atol=1e-12)
    _close(vmap, want, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# the distributed step takes the same keywords (single-process mode)
# ---------------------------------------------------------------------------


def test_distributed_dp_step_forwards_micro_batches_and_per_layer_bounds():
    params, (x, y) = _params(), _batch(10)
    opt = fdl.optim.sgd(lr=0.5, momentum=0.5)
    kw = _dp_kwargs(CLIPPING["per_layer_tree"], micro_batch_size=3)
    single = privacy.make_dp_train_step(_loss, opt, **kw)
    dist = distributed.make_dp_train_step(_loss, opt, **kw)
    key = fdl.random.key(2)
    want = single(params, opt.init(params), key, x, y, mask=MASK)
    got = dist(params, opt.init(params), key, x, y, mask=MASK)
    _close(got[:2], want[:2], rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="unexpected keyword argument 'noise'"):
        distributed.make_dp_train_step(_loss, opt, noise=1.0, **kw)
    with pytest.raises(TypeError, match="missing required keyword argument 'expected_batch_size'"):
        distributed.make_dp_train_step(_loss, opt, noise_multiplier=1.0, max_grad_norm=1.0)


# ---------------------------------------------------------------------------
# gradient accumulation is refused (it would noise every micro-batch)
# ---------------------------------------------------------------------------

ACCUMULATING = {
    "MultiSteps": lambda: fdl.optim.MultiSteps(fdl.optim.sgd(lr=0.1), every_k_schedule=2),
    "multi_steps": lambda: fdl.optim.multi_steps(fdl.optim.sgd(lr=0.1), every_k_schedule=2),
    "chain": lambda: fdl.optim.chain(
        fdl.optim.clip_by_global_norm(1.0),
        fdl.optim.multi_steps(fdl.optim.sgd(lr=0.1), every_k_schedule=2),
    ),
}
BUILDERS = {"privacy": privacy.make_dp_train_step, "distributed": distributed.make_dp_train_step}


@pytest.mark.parametrize("builder", list(BUILDERS))
@pytest.mark.parametrize("opt", list(ACCUMULATING))
def test_dp_step_refuses_gradient_accumulation(builder, opt):
    params, (x, y) = _params(), _batch(4)
    optimizer = ACCUMULATING[opt]()
    with pytest.raises(ValueError, match="micro_batch_size"):  # noqa: PT012
        step = BUILDERS[builder](_loss, optimizer, **_dp_kwargs(1.0))
        step(params, optimizer.init(params), fdl.random.key(0), x, y)


# ---------------------------------------------------------------------------
# Poisson overflow: counted, never silent
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_size", [3, 40, 200])
def test_poisson_overflow_is_counted(max_size):
    n, q = 200, 0.1
    for s in range(5):
        key = fdl.random.key(s)
        drawn = int(privacy.poisson_sample(key, n, q, n)[1].sum())  # room for every draw
        idx, mask, dropped = privacy.poisson_sample(key, n, q, max_size, return_overflow=True)
        assert int(dropped) == max(0, drawn - max_size) and dropped.dtype == torch.int64
        assert int(mask.sum()) == min(drawn, max_size)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            idx2, mask2 = privacy.poisson_sample(key, n, q, max_size)
        assert torch.equal(idx, idx2) and torch.equal(mask, mask2)  # same batch either way
        messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
        if drawn > max_size:
            assert len(messages) == 1 and f"{drawn - max_size} of the {drawn}" in messages[0]
        else:
            assert messages == []


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

BAD = [
    ({"micro_batch_size": 0}, ValueError, "micro_batch_size must be a positive int"),
    ({"micro_batch_size": 2.5}, ValueError, "micro_batch_size must be a positive int"),
    ({"micro_batch_size": True}, ValueError, "micro_batch_size must be a positive int"),
    (
        {"max_grad_norm": {"conv": {"weight": 1.0, "bias": 0.0}}},
        ValueError,
        r"max_grad_norm\['conv.bias'\]",
    ),
    ({"max_grad_norm": [1.0, -1.0]}, ValueError, r"max_grad_norm\['1'\] must be a positive"),
    ({"max_grad_norm": []}, ValueError, "max_grad_norm must be a number or a pytree"),
]


@pytest.mark.parametrize(("override", "error", "match"), BAD)
def test_bad_arguments(override, error, match):
    kwargs = {**_dp_kwargs(1.0), **override}
    with pytest.raises(error, match=match):
        privacy.dp_grads(_loss, **kwargs)
    with pytest.raises(error, match=match):
        distributed.make_dp_train_step(_loss, fdl.optim.sgd(lr=0.1), **kwargs)


def test_bounds_that_do_not_fit_the_params():
    params, (x, y) = _params(), _batch(4)
    key = fdl.random.key(0)
    wrong_len = privacy.dp_grads(_loss, **_dp_kwargs([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="3 per-layer bounds, the params have 4 leaves"):
        wrong_len(params, key, x, y)
    missing = privacy.dp_grads(_loss, **_dp_kwargs({"conv": {"weight": 1.0, "bias": 1.0}}))
    with pytest.raises(ValueError, match="'fc.bias' is missing from max_grad_norm"):
        missing(params, key, x, y)
    micro = privacy.dp_grads(_loss, micro_batch_size=2, **_dp_kwargs(1.0))
    with pytest.raises(ValueError, match="mask must have shape"):
        micro(params, key, x, y, mask=torch.ones(3, dtype=torch.bool))
