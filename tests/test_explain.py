"""fdl.explain against Captum on one small CNN: same params, same inputs, same noise.

Deterministic methods agree to 1e-6 (float32, relative to the largest
attribution) and 1e-10 (float64). Captum rounds its IG quadrature to float32
and divides occlusion totals in float32; the float64 comparisons hand Captum
the exact values (``_captum_in_float64``) so that only the methods' formulas
are compared. Stochastic methods get fdl's noise: Captum's ``torch.normal``,
``np.random.choice`` and ``np.random.uniform`` are replaced, inside Captum's
modules only, by functions returning what fdl drew from its key.
"""

from __future__ import annotations

import inspect
import types

import pytest
import torch

import fdl
from fdl import explain

captum_attr = pytest.importorskip("captum.attr")
import captum._utils.common as captum_common  # noqa: E402
import captum.attr._core.feature_ablation as captum_feature_ablation  # noqa: E402
import captum.attr._core.gradient_shap as captum_gradient_shap  # noqa: E402
import captum.attr._core.integrated_gradients as captum_ig  # noqa: E402
import captum.attr._core.noise_tunnel as captum_noise_tunnel  # noqa: E402

# Captum warns that it sets requires_grad on the inputs it is given
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require")

N = 3  # examples per batch
SHAPE = (1, 8, 8)  # one example
TOL = {torch.float32: 1e-6, torch.float64: 1e-10}


# ---------------------------------------------------------------------------
# the model: fdl layers, and the torch module holding the same params
# ---------------------------------------------------------------------------


def _fdl_cnn(activation, pool):
    return fdl.nn.Sequential(
        fdl.nn.Conv2d(1, 4, 3, padding=1),
        activation(),
        pool(2),
        fdl.nn.Flatten(),
        fdl.nn.Linear(4 * 4 * 4, 10),
    )


def _torch_cnn(activation, pool):
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        activation(),
        pool(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 10),
    )


class Model(types.SimpleNamespace):
    forward: object  # pure fdl forward
    module: torch.nn.Module  # the torch module with the same params


def _model(dtype, smooth=False):
    """conv -> relu -> max-pool -> linear; ``smooth``: tanh and average pooling (analytic)."""
    if smooth:
        layer = _fdl_cnn(fdl.nn.Tanh, fdl.nn.AvgPool2d)
        module = _torch_cnn(torch.nn.Tanh, torch.nn.AvgPool2d)
    else:
        layer = _fdl_cnn(fdl.nn.ReLU, fdl.nn.MaxPool2d)
        module = _torch_cnn(torch.nn.ReLU, torch.nn.MaxPool2d)
    params = fdl.tree.map(lambda t: t.to(dtype), layer.init(fdl.random.key(0)))
    module = module.to(dtype).eval()
    module.load_state_dict(fdl.nn.state_dict(params))
    return Model(forward=lambda x: layer.apply(params, x), module=module)


@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture(scope="module")
def model(dtype):
    return _model(dtype)


@pytest.fixture(scope="module")
def batch(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(N, *SHAPE, generator=g, dtype=torch.float64).to(dtype)
    y = torch.tensor([3, 0, 7])
    return x, y


def _baseline(dtype):
    g = torch.Generator().manual_seed(2)
    return (0.2 * torch.rand(N, *SHAPE, generator=g, dtype=torch.float64)).to(dtype)


# ---------------------------------------------------------------------------
# Captum in float64: exact quadrature weights and an exact occlusion division
# ---------------------------------------------------------------------------


class _KeepDtype(torch.Tensor):
    """A tensor whose ``.float()`` keeps float64 (Captum's IG casts its weights with it)."""

    def float(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)


class _TorchWithFloat64Tensor:
    """``torch`` as Captum's IG module sees it, with ``torch.tensor`` making float64."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def tensor(data, *args, **kwargs):
        return torch.tensor(data, dtype=torch.float64).as_subclass(_KeepDtype)


def _format_result_exact(total_attrib, weights, is_inputs_tuple, use_weights):
    attrib = tuple(t / w for t, w in zip(total_attrib, weights, strict=True))
    return captum_common._format_output(is_inputs_tuple, attrib)


@pytest.fixture
def captum_in(dtype, monkeypatch):
    """Captum computing in ``dtype`` end to end (a no-op for float32)."""
    if dtype == torch.float64:
        monkeypatch.setattr(captum_ig, "torch", _TorchWithFloat64Tensor())
        monkeypatch.setattr(captum_feature_ablation, "format_result", _format_result_exact)
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # Riemann alphas come from torch.linspace
        yield
        torch.set_default_dtype(old)
    else:
        yield


# ---------------------------------------------------------------------------
# registry of deterministic methods: (id, fdl call, Captum call)
# ---------------------------------------------------------------------------

IG_CASES = [
    (m, n, ibs)
    for m in explain.METHODS
    for n, ibs in ((7, None), (16, 2 * N))  # an odd count; chunks of 2 steps
]

DETERMINISTIC = [
    (
        "saliency_abs",
        lambda f, x, y, b: explain.saliency(f, x, y),
        lambda m, x, y, b: captum_attr.Saliency(m).attribute(x, target=y),
    ),
    (
        "saliency_signed",
        lambda f, x, y, b: explain.saliency(f, x, y, abs=False),
        lambda m, x, y, b: captum_attr.Saliency(m).attribute(x, target=y, abs=False),
    ),
    (
        "saliency_int_target",
        lambda f, x, y, b: explain.saliency(f, x, 5),
        lambda m, x, y, b: captum_attr.Saliency(m).attribute(x, target=5),
    ),
    (
        "input_x_gradient",
        lambda f, x, y, b: explain.input_x_gradient(f, x, y),
        lambda m, x, y, b: captum_attr.InputXGradient(m).attribute(x, target=y),
    ),
    *[
        (
            f"ig_{m}_{n}_{ibs}",
            lambda f, x, y, b, m=m, n=n, ibs=ibs: explain.integrated_gradients(
                f, x, y, baselines=b, n_steps=n, method=m, internal_batch_size=ibs
            ),
            lambda mod, x, y, b, m=m, n=n, ibs=ibs: captum_attr.IntegratedGradients(mod).attribute(
                x, baselines=b, target=y, n_steps=n, method=m, internal_batch_size=ibs
            ),
        )
        for m, n, ibs in IG_CASES
    ],
    (
        "ig_default_zero_baseline",
        lambda f, x, y, b: explain.integrated_gradients(f, x, y),
        lambda m, x, y, b: captum_attr.IntegratedGradients(m).attribute(x, target=y),
    ),
    (
        "ig_scalar_baseline",
        lambda f, x, y, b: explain.integrated_gradients(f, x, y, baselines=0.5, n_steps=9),
        lambda m, x, y, b: captum_attr.IntegratedGradients(m).attribute(
            x, baselines=0.5, target=y, n_steps=9
        ),
    ),
    (
        "occlusion_3x3_stride1",
        lambda f, x, y, b: explain.occlusion(
            f, x, y, sliding_window_shapes=(1, 3, 3), perturbations_per_eval=8
        ),
        lambda m, x, y, b: captum_attr.Occlusion(m).attribute(
            x, sliding_window_shapes=(1, 3, 3), target=y
        ),
    ),
    (
        "occlusion_cut_edge_windows",  # 8 = 0 + 3 + 3 + 2: the last window is cut
        lambda f, x, y, b: explain.occlusion(
            f, x, y, sliding_window_shapes=(1, 3, 3), strides=(1, 3, 2), baselines=b
        ),
        lambda m, x, y, b: captum_attr.Occlusion(m).attribute(
            x, sliding_window_shapes=(1, 3, 3), strides=(1, 3, 2), baselines=b, target=y
        ),
    ),
    (
        "occlusion_scalar_baseline",
        lambda f, x, y, b: explain.occlusion(
            f, x, y, sliding_window_shapes=(1, 2, 4), strides=2, baselines=0.5
        ),
        lambda m, x, y, b: captum_attr.Occlusion(m).attribute(
            x, sliding_window_shapes=(1, 2, 4), strides=2, baselines=0.5, target=y
        ),
    ),
]


def _assert_close(got, want, dtype):
    tol = TOL[dtype]
    assert got.dtype == dtype and got.shape == want.shape
    scale = float(want.detach().abs().max())
    assert scale > 0
    torch.testing.assert_close(got, want.to(dtype), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize(
    "fdl_fn, captum_fn", [e[1:] for e in DETERMINISTIC], ids=[e[0] for e in DETERMINISTIC]
)
def test_deterministic_matches_captum(fdl_fn, captum_fn, model, batch, dtype, captum_in):
    x, y = batch
    b = _baseline(dtype)
    want = captum_fn(model.module, x, y, b)
    got = fdl_fn(model.forward, x, y, b)
    _assert_close(got, want, dtype)


def test_float32_parity_catches_a_wrong_alpha_rule(batch):
    """A rule off by half a step (middle vs left) is far outside the parity tolerance."""
    model = _model(torch.float32)
    x, y = (t.float() if t.is_floating_point() else t for t in batch)
    ig = captum_attr.IntegratedGradients(model.module)
    want = ig.attribute(x, target=y, n_steps=7, method="riemann_middle")
    got = explain.integrated_gradients(model.forward, x, y, n_steps=7, method="riemann_left")
    assert float((got - want).abs().max()) > 1e3 * TOL[torch.float32] * float(want.abs().max())


@pytest.mark.parametrize("method", explain.METHODS)
def test_quadrature_matches_captum_rule(method):
    """Nodes and weights equal Captum's builders (which round to float32)."""
    from captum.attr._utils.approximation_methods import approximation_parameters

    steps_fn, alphas_fn = approximation_parameters(method)
    alpha, w = explain.quadrature(method, 13)
    torch.testing.assert_close(
        alpha, torch.tensor(alphas_fn(13), dtype=torch.float64), rtol=0, atol=1e-7
    )
    torch.testing.assert_close(
        w, torch.tensor(steps_fn(13), dtype=torch.float64), rtol=0, atol=1e-7
    )


# ---------------------------------------------------------------------------
# convergence delta and completeness
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_convergence_delta_matches_captum(method, model, batch, dtype, captum_in):
    x, y = batch
    b = _baseline(dtype)
    want_a, want_d = captum_attr.IntegratedGradients(model.module).attribute(
        x, baselines=b, target=y, n_steps=12, method=method, return_convergence_delta=True
    )
    got_a, got_d = explain.integrated_gradients(
        model.forward, x, y, baselines=b, n_steps=12, method=method, return_convergence_delta=True
    )
    _assert_close(got_a, want_a, dtype)
    scale = float((model.forward(x) - model.forward(b)).abs().max())
    torch.testing.assert_close(got_d, want_d.to(dtype), rtol=0, atol=TOL[dtype] * scale)


def test_completeness():
    """sum(attr_i) = f(x_i) - f(b_i) - delta_i, and delta vanishes for a smooth model."""
    model = _model(torch.float64, smooth=True)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(N, *SHAPE, generator=g, dtype=torch.float64)
    b = _baseline(torch.float64)
    y = torch.tensor([1, 2, 9])
    gap = (
        model.forward(x).gather(1, y[:, None])[:, 0] - model.forward(b).gather(1, y[:, None])[:, 0]
    )
    deltas = {}
    for n_steps in (2, 8, 32):
        attr, delta = explain.integrated_gradients(
            model.forward, x, y, baselines=b, n_steps=n_steps, return_convergence_delta=True
        )
        sums = attr.reshape(N, -1).sum(1)
        torch.testing.assert_close(sums - gap, delta, rtol=0, atol=1e-12)
        deltas[n_steps] = float(delta.abs().max())
    # Gauss-Legendre converges fast on an analytic path integrand
    assert deltas[32] < 1e-10 * float(gap.abs().max()) < deltas[2]


# ---------------------------------------------------------------------------
# stochastic methods, given fdl's noise
# ---------------------------------------------------------------------------


class _Feed:
    """Stand-ins for Captum's random draws that hand out fdl's numbers in order."""

    def __init__(self, noise=None, index=None, alpha=None, stdevs=None):
        self.noise, self.index, self.alpha, self.stdevs = noise, index, alpha, stdevs
        self.used = 0  # noise samples per example handed out so far

    def normal(self, mean, std):
        rows = std.shape[0] // self.noise.shape[0]
        assert mean == 0 and bool((std == std.reshape(-1)[0]).all())
        torch.testing.assert_close(float(std.reshape(-1)[0]), self.stdevs, rtol=1e-7, atol=0)
        z = self.noise[:, self.used : self.used + rows].reshape(std.shape)  # example-major rows
        self.used += rows
        return self.stdevs * z

    def choice(self, num, size):
        assert size == self.index.numel()
        return self.index.numpy()

    def uniform(self, low, high, size):
        assert (low, high, size) == (0.0, 1.0, self.alpha.numel())
        return self.alpha.double().numpy()


class _TorchWithNormal:
    def __init__(self, normal):
        self._normal = normal

    def __getattr__(self, name):
        return self._normal if name == "normal" else getattr(torch, name)


def _feed_noise(monkeypatch, feed):
    monkeypatch.setattr(captum_noise_tunnel, "torch", _TorchWithNormal(feed.normal))


NT_CASES = [
    ("smoothgrad", 6, None, {}),
    ("smoothgrad", 5, 2, {"abs": False}),  # batches of 2, 2 and 1 samples
    ("smoothgrad_sq", 4, None, {}),
    ("vargrad", 4, 3, {}),
]


@pytest.mark.parametrize("nt_type, nt_samples, batch_size, kwargs", NT_CASES)
def test_noise_tunnel_saliency_matches_captum(
    nt_type, nt_samples, batch_size, kwargs, model, batch, dtype, monkeypatch
):
    x, y = batch
    key, stdevs = fdl.random.key(7), 0.3
    noise = fdl.random.normal(key, (N, nt_samples, *SHAPE), dtype=dtype)
    feed = _Feed(noise=noise, stdevs=stdevs)
    _feed_noise(monkeypatch, feed)
    nt = captum_attr.NoiseTunnel(captum_attr.Saliency(model.module))
    want = nt.attribute(
        x,
        nt_type=nt_type,
        nt_samples=nt_samples,
        nt_samples_batch_size=batch_size,
        stdevs=stdevs,
        target=y,
        **kwargs,
    )
    assert feed.used == nt_samples
    got = explain.noise_tunnel(
        explain.saliency,
        model.forward,
        x,
        y,
        nt_type=nt_type,
        nt_samples=nt_samples,
        nt_samples_batch_size=batch_size,
        stdevs=stdevs,
        key=key,
        **kwargs,
    )
    _assert_close(got, want, dtype)


def test_smooth_grad_of_integrated_gradients_matches_captum(
    model, batch, dtype, captum_in, monkeypatch
):
    """The tunnel around IG, with a per-example baseline batch repeated per sample."""
    x, y = batch
    b = _baseline(dtype)
    key, stdevs = fdl.random.key(8), 0.2
    feed = _Feed(noise=fdl.random.normal(key, (N, 3, *SHAPE), dtype=dtype), stdevs=stdevs)
    _feed_noise(monkeypatch, feed)
    nt = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(model.module))
    want = nt.attribute(
        x, nt_type="smoothgrad", nt_samples=3, stdevs=stdevs, target=y, baselines=b, n_steps=6
    )
    got = explain.smooth_grad(
        model.forward,
        x,
        y,
        nt_samples=3,
        stdevs=stdevs,
        key=key,
        attribution=explain.integrated_gradients,
        baselines=b,
        n_steps=6,
    )
    _assert_close(got, want, dtype)


@pytest.mark.parametrize("stdevs, n_samples", [(0.0, 5), (0.25, 4)])
def test_gradient_shap_matches_captum(stdevs, n_samples, model, batch, dtype, monkeypatch):
    x, y = batch
    g = torch.Generator().manual_seed(4)
    refs = torch.rand(6, *SHAPE, generator=g, dtype=torch.float64).to(dtype)
    key = fdl.random.key(9)
    k_index, k_noise, k_alpha = fdl.random.split(key, 3)
    feed = _Feed(
        noise=fdl.random.normal(k_noise, (N, n_samples, *SHAPE), dtype=dtype),
        index=fdl.random.randint(k_index, (N * n_samples,), 0, refs.shape[0]),
        alpha=fdl.random.uniform(k_alpha, (N * n_samples,), dtype=dtype),
        stdevs=stdevs,
    )
    _feed_noise(monkeypatch, feed)
    monkeypatch.setattr(captum_common.np.random, "choice", feed.choice)
    monkeypatch.setattr(captum_gradient_shap.np.random, "uniform", feed.uniform)
    want_a, want_d = captum_attr.GradientShap(model.module).attribute(
        x,
        baselines=refs,
        n_samples=n_samples,
        stdevs=stdevs,
        target=y,
        return_convergence_delta=True,
    )
    got_a, got_d = explain.gradient_shap(
        model.forward,
        x,
        y,
        baselines=refs,
        n_samples=n_samples,
        stdevs=stdevs,
        key=key,
        return_convergence_delta=True,
    )
    _assert_close(got_a, want_a, dtype)
    _assert_close(got_d, want_d, dtype)


def test_noise_is_a_function_of_the_key(batch):
    model = _model(torch.float32)
    x = batch[0].float()
    a = explain.smooth_grad(model.forward, x, 1, stdevs=0.2, key=fdl.random.key(1))
    b = explain.smooth_grad(model.forward, x, 1, stdevs=0.2, key=fdl.random.key(1))
    c = explain.smooth_grad(model.forward, x, 1, stdevs=0.2, key=fdl.random.key(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="key"):
        explain.vargrad(model.forward, x, 1)


SHORTCUTS = [
    (explain.smooth_grad, "smoothgrad"),
    (explain.smooth_grad_sq, "smoothgrad_sq"),
    (explain.vargrad, "vargrad"),
]


@pytest.mark.parametrize(
    ("shortcut", "nt_type"), SHORTCUTS, ids=lambda v: getattr(v, "__name__", v)
)
def test_shortcut_is_noise_tunnel_with_its_nt_type(shortcut, nt_type):
    """Each shortcut is noise_tunnel(attribution, ...) with its nt_type, keywords passed on."""
    w = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]], dtype=torch.float64)
    f = lambda v: torch.tanh(v @ w.T)  # nonlinear: the three nt_types differ
    x = torch.tensor([[0.3, -1.0, 0.7], [1.2, 0.1, -0.4]], dtype=torch.float64)
    opts = dict(nt_samples=4, nt_samples_batch_size=3, stdevs=0.3, key=fdl.random.key(3))
    got = shortcut(f, x, 1, **opts, abs=False)
    tunnel = lambda t: explain.noise_tunnel(explain.saliency, f, x, 1, nt_type=t, **opts, abs=False)
    torch.testing.assert_close(got, tunnel(nt_type), rtol=0, atol=0)
    other = tunnel(next(t for t in explain.NT_TYPES if t != nt_type))
    assert not torch.allclose(got, other)
    assert shortcut.__name__ == shortcut.__qualname__ != "method"
    params = inspect.signature(shortcut).parameters
    assert list(params) == [
        "forward",
        "inputs",
        "target",
        "nt_samples",
        "nt_samples_batch_size",
        "stdevs",
        "attribution",
        "key",
        "kwargs",
    ]
    assert params["attribution"].default is explain.saliency
    assert (params["nt_samples"].default, params["stdevs"].default) == (5, 1.0)


def test_smooth_grad_converges_to_the_expected_gradient():
    """Statistical check without Captum: SmoothGrad of a quadratic is the gradient at x.

    f(x) = sum(c * x**2) has df/dx = 2 c x, linear in x, so E[grad(x + s z)] = 2 c x; the
    mean of S samples has standard error 2 |c| s / sqrt(S) per entry (bound at 6 sigma).
    """
    c = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    x = torch.tensor([[0.3, 1.0, -0.7]], dtype=torch.float64)
    s, samples = 0.5, 4000
    got = explain.smooth_grad(
        lambda v: (c * v**2).sum(1),
        x,
        stdevs=s,
        nt_samples=samples,
        key=fdl.random.key(5),
        abs=False,
    )
    bound = 6 * 2 * c.abs() * s / samples**0.5
    assert bool(((got - 2 * c * x).abs() < bound).all())


# ---------------------------------------------------------------------------
# vmap and torch.compile: every method, one registry
# ---------------------------------------------------------------------------

KEY = fdl.random.key(11)
ALL_METHODS = [
    ("saliency", lambda f, x, y: explain.saliency(f, x, y)),
    ("input_x_gradient", lambda f, x, y: explain.input_x_gradient(f, x, y)),
    (
        "integrated_gradients",
        lambda f, x, y: explain.integrated_gradients(f, x, y, n_steps=5, internal_batch_size=2 * N),
    ),
    (
        "smooth_grad",
        lambda f, x, y: explain.smooth_grad(f, x, y, nt_samples=3, stdevs=0.1, key=KEY),
    ),
    ("smooth_grad_sq", lambda f, x, y: explain.smooth_grad_sq(f, x, y, nt_samples=3, key=KEY)),
    ("vargrad", lambda f, x, y: explain.vargrad(f, x, y, nt_samples=3, key=KEY)),
    (
        "occlusion",
        lambda f, x, y: explain.occlusion(
            f, x, y, sliding_window_shapes=(1, 4, 4), strides=4, perturbations_per_eval=4
        ),
    ),
    (
        "gradient_shap",
        lambda f, x, y: explain.gradient_shap(
            f, x, y, baselines=torch.zeros(2, *SHAPE), n_samples=3, stdevs=0.1, key=KEY
        ),
    ),
]


@pytest.fixture(scope="module")
def stacked():
    """Two batches of N examples, stacked: (2, N, *SHAPE) and targets (2, N)."""
    g = torch.Generator().manual_seed(6)
    return torch.rand(2, N, *SHAPE, generator=g), torch.tensor([[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("fn", [m[1] for m in ALL_METHODS], ids=[m[0] for m in ALL_METHODS])
def test_vmap_over_batches_equals_a_loop(fn, stacked):
    model = _model(torch.float32)
    xs, ys = stacked
    got = torch.func.vmap(lambda x, y: fn(model.forward, x, y))(xs, ys)
    want = torch.stack([fn(model.forward, x, y) for x, y in zip(xs, ys, strict=True)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def compiled_outputs(stacked):
    """Every method in one ``torch.compile(fullgraph=True)`` graph, traced through AOTAutograd.

    ``fullgraph=True`` fails on any graph break; the ``aot_eager`` backend runs the
    traced, functionalized graph without inductor's code generation (minutes here).
    """
    model = _model(torch.float32)
    x, y = stacked[0][0], stacked[1][0]
    run_all = torch.compile(
        lambda x, y: tuple(fn(model.forward, x, y) for _, fn in ALL_METHODS),
        fullgraph=True,
        backend="aot_eager",
    )
    return dict(zip([name for name, _ in ALL_METHODS], run_all(x, y), strict=True))


@pytest.mark.parametrize("name, fn", ALL_METHODS, ids=[m[0] for m in ALL_METHODS])
def test_compiled_equals_eager(name, fn, compiled_outputs, stacked):
    model = _model(torch.float32)
    x, y = stacked[0][0], stacked[1][0]
    torch.testing.assert_close(
        compiled_outputs[name], fn(model.forward, x, y), rtol=1e-5, atol=1e-6
    )


def test_inputs_are_not_mutated(batch):
    model = _model(torch.float32)
    x, y = batch[0].float().clone(), batch[1].clone()
    x0, y0 = x.clone(), y.clone()
    for _, fn in ALL_METHODS:
        fn(model.forward, x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_bad_arguments_raise():
    model = _model(torch.float32)
    x = torch.rand(N, *SHAPE)
    with pytest.raises(ValueError, match="one value per example"):
        explain.saliency(model.forward, x)  # (N, 10) output and no target
    with pytest.raises(ValueError, match="method"):
        explain.integrated_gradients(model.forward, x, 0, method="simpson")
    with pytest.raises(ValueError, match="n_steps"):
        explain.integrated_gradients(model.forward, x, 0, n_steps=1, method="riemann_left")
    with pytest.raises(ValueError, match="baselines"):
        explain.integrated_gradients(model.forward, x, 0, baselines=torch.zeros(5))
    with pytest.raises(ValueError, match="exceeds"):
        explain.occlusion(model.forward, x, 0, sliding_window_shapes=(1, 9, 1))
    with pytest.raises(ValueError, match="stride"):
        explain.occlusion(model.forward, x, 0, sliding_window_shapes=(1, 2, 2), strides=3)


# ---------------------------------------------------------------------------
# examples/explain_mnist.py, quick mode
# ---------------------------------------------------------------------------


def _load_example(name):
    import importlib.util
    import os
    import sys
    from pathlib import Path

    root = os.environ.get("FDL_DATA_DIR")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip("FDL_DATA_DIR is unset or holds no MNIST/raw")
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_explain_mnist_example_quick(tmp_path):
    example = _load_example("explain_mnist")
    out = example.main(
        ["--epochs", "1", "--limit", "256", "--digits", "2", "--ig-steps", "8",
         "--nt-samples", "2", "--no-compile", "--out", str(tmp_path)]
    )  # fmt: skip
    assert (tmp_path / "attributions.png").stat().st_size > 0
    assert (tmp_path / "filters.png").stat().st_size > 0
    assert out["pred"].shape == (2,)


def test_docs_examples_run():
    """Every ```python block of docs/explain.md runs, in order, in one namespace."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "explain.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/explain.md block {i}", "exec"), namespace)
