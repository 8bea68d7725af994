"""The rules path under ``torch.compile(fullgraph=True)``.

Every entry of the registry (an MNIST-style CNN of ``Conv2d``/``Linear``, an
``Embedding`` -> ``LayerNorm`` -> ``Linear`` model, a ``batch_first``
``TransformerEncoderLayer`` classifier): the compiled per-example gradients,
norms (ghost norms where cheaper) and DP-SGD step equal the eager rules and the
``vmap`` path, the compiled functions take the rules (no ``vmap`` traced) and
trace once across calls with new data and keys.

Tolerances: float64 1e-10 (the same few hundred roundings as eagerly, in
another order). float32: the compiled graph may order sums differently, each
entry a sum of at most ~10^3 products of O(1) values, rounding of unit 6e-8
growing like sqrt(n) per reduction over ~5 layers: about 1e-5 of the largest
entry; the tests allow 1e-5 relative plus 1e-5 of the largest reference entry.

The rules are compiled on request (``method="rules"``); ``method="auto"`` keeps
the quicker-to-compile ``vmap`` path under ``torch.compile``. The compiles use
``eager``/``aot_eager`` (functionalised graphs as inductor receives them, without
code generation) to keep the file fast.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_per_sample_layers import _ints, _randn

import fdl
from fdl import privacy
from fdl._per_sample import core as _core

B = 6


def _init(model: fdl.nn.Layer, dtype: torch.dtype) -> Any:
    params = model.init(fdl.random.key(0))
    leaves = [
        0.5 * _randn(*t.shape, dtype=dtype, seed=i) for i, t in enumerate(fdl.tree.leaves(params))
    ]
    return fdl.tree.unflatten(fdl.tree.structure(params), leaves)


def _cnn(dtype: torch.dtype, seed: int) -> tuple[Any, tuple[torch.Tensor, ...], Callable]:
    nn = fdl.nn
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 4, 3, padding=1, dtype=dtype),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),  # (B, 4, 6, 6)
            conv2=nn.Conv2d(4, 8, 3, padding=1, dtype=dtype),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),  # (B, 8, 3, 3)
            flatten=nn.Flatten(),  # (B, 72)
            fc1=nn.Linear(72, 16, dtype=dtype),
            relu3=nn.ReLU(),
            fc2=nn.Linear(16, 10, dtype=dtype),
            log_softmax=nn.LogSoftmax(dim=1),
        )
    )

    def loss_fn(p, x, y):
        return fdl.losses.nll_loss(model.apply(p, x), y)

    batch = (_randn(B, 1, 12, 12, dtype=dtype, seed=seed), _ints(B, high=10, seed=seed))
    return _init(model, dtype), batch, loss_fn


def _emb_norm_linear(
    dtype: torch.dtype, seed: int
) -> tuple[Any, tuple[torch.Tensor, ...], Callable]:
    emb = fdl.nn.Embedding(11, 8, padding_idx=0, dtype=dtype)
    norm = fdl.nn.LayerNorm(8, dtype=dtype)
    fc = fdl.nn.Linear(8, 3, dtype=dtype)
    params = {"emb": _init(emb, dtype), "norm": _init(norm, dtype), "fc": _init(fc, dtype)}

    def loss_fn(p, x, y):
        h = norm.apply(p["norm"], emb.apply(p["emb"], x))  # (B, T, 8)
        return F.cross_entropy(fc.apply(p["fc"], h.mean(1)), y)

    return params, (_ints(B, 5, high=11, seed=seed), _ints(B, high=3, seed=seed + 1)), loss_fn


def _transformer(dtype: torch.dtype, seed: int) -> tuple[Any, tuple[torch.Tensor, ...], Callable]:
    enc = fdl.nn.TransformerEncoderLayer(
        8, 2, dim_feedforward=12, dropout=0.0, batch_first=True, dtype=dtype
    )
    fc = fdl.nn.Linear(8, 3, dtype=dtype)
    params = {"enc": _init(enc, dtype), "fc": _init(fc, dtype)}

    def loss_fn(p, x, y):
        return F.cross_entropy(fc.apply(p["fc"], enc.apply(p["enc"], x).mean(1)), y)

    return params, (_randn(B, 4, 8, dtype=dtype, seed=seed), _ints(B, high=3, seed=seed)), loss_fn


# name -> builder(dtype, seed) -> (params, batch, loss_fn); every model has rules for all leaves
CASES: dict[str, Callable[..., tuple[Any, tuple[torch.Tensor, ...], Callable]]] = {
    "mnist_cnn": _cnn,
    "emb_layernorm_linear": _emb_norm_linear,
    "transformer_classifier": _transformer,
}
NAMES = list(CASES)
DTYPES = {"f64": torch.float64, "f32": torch.float32}


def _close(got: Any, want: Any, dtype: torch.dtype) -> None:
    for a, e in zip(fdl.tree.leaves(got), fdl.tree.leaves(want), strict=True):
        if dtype == torch.float64:
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
        else:
            atol = 1e-5 * float(e.abs().max()) + 1e-12
            torch.testing.assert_close(a.double(), e.double(), rtol=1e-5, atol=atol)


@contextmanager
def _paths_traced():
    """Count, while tracing, how often the rules and the ``vmap`` paths are entered."""
    seen = {"rules": 0, "vmap": 0}

    def spy(name: str, fn: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            seen[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_core, "rules_factored", spy("rules", _core.rules_factored))
        mp.setattr(_core, "vmap_dense", spy("vmap", _core.vmap_dense))
        mp.setattr(_core, "vmap_sq_norms", spy("vmap", _core.vmap_sq_norms))
        yield seen


class Graphs(list):
    """A ``torch.compile`` backend that keeps every graph Dynamo hands it (one per trace)."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.backend = torch._dynamo.lookup_backend(backend)

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        self.append(gm)
        return self.backend(gm, example_inputs)

    def rules_checks(self) -> int:
        """How many in-graph reduction checks (one per rules decomposition) were traced."""
        return sum(n.target is torch._assert_async for gm in self for n in gm.graph.nodes)


def _compiled(fn: Callable, backend: str = "eager") -> tuple[Callable, Graphs]:
    graphs = Graphs(backend)
    return torch.compile(fn, fullgraph=True, backend=graphs), graphs


def _grads_and_norms(loss_fn: Callable, **kw: Any) -> Callable:
    grads, norms = fdl.per_sample_grads(loss_fn, **kw), fdl.per_sample_grad_norms(loss_fn, **kw)
    return lambda params, *batch: (grads(params, *batch), norms(params, *batch))


# (model, dtype): float64 for every model (float32 compiled: the DP-step test below)
COMPILED = [(n, "f64") for n in NAMES]


@pytest.fixture(scope="module", params=COMPILED, ids=[f"{n}-{d}" for n, d in COMPILED])
def compiled_case(request):
    """Compiled grads and norms of one model and dtype on three batches, and what was traced."""
    name, dname = request.param
    dtype = DTYPES[dname]
    params, _, loss_fn = CASES[name](dtype, 0)
    batches = [CASES[name](dtype, s)[1] for s in (1, 2, 3)]
    fn, graphs = _compiled(_grads_and_norms(loss_fn, method="rules"))
    got = [fn(params, *b) for b in batches]
    return params, batches, loss_fn, dtype, got, graphs


def test_compiled_rules_equal_eager_rules_and_vmap(compiled_case):
    params, batches, loss_fn, dtype, got, _ = compiled_case
    for batch, out in zip(batches, got, strict=True):
        for method in ("rules", "vmap"):
            _close(out, _grads_and_norms(loss_fn, method=method)(params, *batch), dtype)


def test_compiled_takes_the_rules_and_traces_once(compiled_case):
    graphs = compiled_case[-1]
    assert len(graphs) == 1  # three batches, one trace
    assert graphs.rules_checks() == 2  # grads and norms each took the rules


def test_eager_plan_is_rules_for_every_leaf():
    # the registry's premise: every model is fully covered by rules eagerly too
    for name in NAMES:
        params, batch, loss_fn = CASES[name](torch.float64, 0)
        plan = fdl.per_sample.per_sample_method(loss_fn)(params, *batch)
        assert plan.method == "rules" and all(plan.rules.values()), (name, plan)


# ---------------------------------------------------------------------------
# the DP-SGD step
# ---------------------------------------------------------------------------

DP = {"noise_multiplier": 0.7, "max_grad_norm": 0.5, "expected_batch_size": 4.0}


@pytest.mark.parametrize(
    ("name", "dname", "backend"),
    [("mnist_cnn", "f32", "aot_eager"), ("emb_layernorm_linear", "f64", "aot_eager")],
)
def test_compiled_dp_step_with_rules_equals_eager(name, dname, backend):
    dtype = DTYPES[dname]
    params, _, loss_fn = CASES[name](dtype, 0)
    opt = fdl.optim.adam(lr=1e-2)
    graphs = Graphs(backend)
    step = privacy.make_dp_train_step(
        loss_fn, opt, **DP, method="rules", compile={"backend": graphs}
    )
    eager = privacy.make_dp_train_step(loss_fn, opt, **DP, method="rules")
    state = opt.init(params)
    for s in range(3):  # new data, keys and Poisson masks every step
        batch = CASES[name](dtype, 10 + s)[1]
        k_mask, k_noise = fdl.random.split(fdl.random.key(s))
        mask = fdl.random.uniform(k_mask, (B,)) < 0.7
        out = step(params, state, k_noise, *batch, mask=mask)
        ref = eager(params, state, k_noise, *batch, mask=mask)
        _close(out[0], ref[0], dtype)
        _close(out[2], ref[2], dtype)  # the loss
        params, state = out[0], out[1]
    assert len(graphs) == 1 and graphs.rules_checks() == 1


def test_compiled_dp_grads_ghost_norms_equal_vmap():
    # a sequence linear layer whose norm takes the Gram (ghost) form, compiled dp_grads
    lin = fdl.nn.Linear(24, 20, dtype=torch.float64)
    params = _init(lin, torch.float64)

    def loss_fn(p, x, y):
        return F.mse_loss(torch.tanh(lin.apply(p, x)), y)  # x: (B, 2, 24), T = 2

    x, y = (
        _randn(B, 2, 24, dtype=torch.float64, seed=1),
        _randn(B, 2, 20, dtype=torch.float64, seed=2),
    )
    fn = privacy.dp_grads(loss_fn, **DP, method="rules")
    compiled, graphs = _compiled(fn, "aot_eager")
    got = compiled(params, fdl.random.key(3), x, y)
    want = privacy.dp_grads(loss_fn, **DP, method="vmap")(params, fdl.random.key(3), x, y)
    _close(got, want, torch.float64)
    assert graphs.rules_checks() == 1


# ---------------------------------------------------------------------------
# what still takes vmap under compile, and the in-graph check
# ---------------------------------------------------------------------------


def _mlp(dtype: torch.dtype = torch.float64) -> tuple[Any, tuple[torch.Tensor, ...]]:
    params = {
        "w1": _randn(5, 4, dtype=dtype, seed=1),
        "w2": _randn(3, 5, dtype=dtype, seed=2),
        "gain": 1 + 0.1 * _randn(5, dtype=dtype, seed=5),  # read by F.layer_norm only
    }
    return params, (_randn(B, 4, dtype=dtype, seed=3), _ints(B, high=3, seed=4))


def _norm_outside_rules(p, x, y):
    # F.layer_norm's own kernel reads the parameter: no rule, a static fallback
    h = F.layer_norm(F.linear(x, p["w1"]), (5,), p["gain"])
    return F.cross_entropy(F.linear(h, p["w2"]), y)


def _marked_vmap_only(p, x, y):
    fdl._per_sample.marks.vmap_only("TestLayer")
    return F.cross_entropy(F.linear(torch.tanh(F.linear(x, p["w1"])), p["w2"]), y)


def test_auto_keeps_vmap_under_compile():
    # method="auto" compiles the vmap path (quick to compile); method="rules" opts in
    params, batch = _mlp()
    compiled, _ = _compiled(_grads_and_norms(_plain))
    with _paths_traced() as seen:
        got = compiled(params, *batch)
    assert seen == {"rules": 0, "vmap": 2}, seen
    _close(got, _grads_and_norms(_plain, method="rules")(params, *batch), torch.float64)


@pytest.mark.parametrize("loss_fn", [_norm_outside_rules, _marked_vmap_only])
def test_structural_fallback_is_refused_at_trace_time(loss_fn):
    params, batch = _mlp()
    # raised while tracing: Dynamo hands the ValueError on wrapped, with its message
    with pytest.raises((ValueError, torch._dynamo.exc.Unsupported), match="rules' does not apply"):
        _compiled(fdl.per_sample_grads(loss_fn, method="rules"))[0](params, *batch)


def _plain(p, x, y):
    return F.cross_entropy(F.linear(torch.tanh(F.linear(x, p["w1"])), p["w2"]), y)


def _coupled(p, x, y):
    h = torch.tanh(F.linear(x, p["w1"]))
    h = h - h.mean(0, keepdim=True) + 0.1  # batch centring couples the examples
    return F.cross_entropy(F.linear(h, p["w2"]), y)


def _squared(p, x, y):
    return F.cross_entropy(F.linear(torch.tanh(F.linear(x, p["w1"])), p["w2"]), y) ** 2


@pytest.mark.parametrize("loss_fn", [_coupled, _squared])
def test_data_dependent_check_raises_when_the_compiled_function_runs(loss_fn):
    params, batch = _mlp()
    compiled, _ = _compiled(fdl.per_sample_grads(loss_fn, method="rules"), "aot_eager")
    with pytest.raises(RuntimeError, match="pass method='vmap'"):
        compiled(params, *batch)
    compiled_vmap, _ = _compiled(fdl.per_sample_grads(loss_fn, method="vmap"))
    _close(
        compiled_vmap(params, *batch), fdl.per_sample_grads(loss_fn)(params, *batch), torch.float64
    )


def test_inside_a_func_transform_keeps_vmap():
    params, batch = _mlp()

    def loss_fn(p, x, y):
        return F.cross_entropy(F.linear(torch.tanh(F.linear(x, p["w1"])), p["w2"]), y)

    def norm_sum(p):
        return fdl.per_sample_grad_norms(loss_fn)(p, *batch).sum()

    with _paths_traced() as seen:
        torch.func.grad(norm_sum)(params)
    assert seen == {"rules": 0, "vmap": 1}, seen
