"""Differentiating through fdl's optimizer updates (meta-learning, hypergradients).

The quantity is ``L(θ_k)``, the loss after ``k = 2`` steps (6 for one RAdam
entry) of ``opt.update`` and ``apply_updates`` from ``θ_0``; its gradient with
respect to ``θ_0`` (through every step's gradient: second order) and to
hyperparameters passed as tensors.
Each path is compared with an independent reference:

* **finite differences** in float64, the fourth-order central formula
  ``f'(x) ≈ (-f(x+2h) + 8f(x+h) - 8f(x-h) + f(x-2h)) / 12h``, evaluated with the
  hyperparameter as a plain float (so the float path is the reference for the
  tensor path). Error model: truncation ``h⁴ |f⁽⁵⁾| / 30`` plus rounding about
  ``3 ε |f| / 2h`` (``ε = 2.2e-16``); with ``h = 1e-3 · min(1, |x|)`` (a step
  small against the value: a learning rate of 0.01 gets ``h = 1e-5``) and
  ``|f|, |f⁽⁵⁾| = O(1-10)`` on this smooth problem both stay below ``1e-10``, so
  ``rtol = 1e-8`` (atol ``1e-9`` for entries near zero) leaves a margin;
* for SGD and Adam, a **hand-written unrolled loop** of the textbook formula,
  differentiated by plain autograd with ``create_graph=True`` (to ``1e-12``:
  both are exact derivatives, they differ by rounding only).

Paths: ``torch.func.grad`` (the per-leaf path: foreach ops have no functorch
rule), eager autograd (the ``torch._foreach_*`` path, with its in-place steps on
fresh buffers, which must stop where autograd saved them), the per-leaf path
forced eagerly, and ``torch.compile`` of the meta-gradient (one compile per
optimizer, every hyperparameter a tensor input: params, hyperparameters and
the absence of recompiles checked together).

A test here fails when a path detaches: ``test_detaching_path_is_caught`` shows
the comparison rejects an update whose gradient was cut. Writing into a buffer
autograd saved raises autograd's version-counter error in the eager tests
(before the fix in ``_foreach._Lv._step`` Adam, RMSprop, Adagrad, NAdam and
RAdam did exactly that).
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from _doc_examples import run_python_blocks
from _matrix_view import as_matrices

import fdl
from fdl.optim import _foreach

Tensor = torch.Tensor
K = 2  # unrolled steps (the second one reads the state the first one wrote)
H = 1e-3  # finite-difference step
RTOL, ATOL = 1e-8, 1e-9


def _betas(opt: Callable[..., Any], **fixed: Any) -> Callable[..., Any]:
    """A factory taking ``b1``, ``b2`` as separate hyperparameters (``betas=(b1, b2)``)."""
    return lambda lr, b1, b2, **h: opt(lr, (b1, b2), **h, **fixed)


# name -> (factory(**hyperparameters) -> optimizer, hyperparameters, the tensor-able names).
# Every float hyperparameter is tensor-able (eps is 1e-3 so that its derivative is not tiny).
OPTIMIZERS: dict[str, tuple[Callable[..., Any], dict[str, float], tuple[str, ...]]] = {
    "sgd": (fdl.optim.sgd, {"lr": 0.1}, ("lr",)),
    "sgd-momentum-dampening-wd": (
        fdl.optim.sgd,
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1},
        ("lr", "momentum", "dampening", "weight_decay"),
    ),
    "sgd-nesterov": (
        lambda **h: fdl.optim.sgd(**h, nesterov=True),
        {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.1},
        ("lr", "momentum", "weight_decay"),
    ),
    "adam": (
        _betas(fdl.optim.adam),
        {"lr": 0.1, "b1": 0.9, "b2": 0.99, "eps": 1e-3, "weight_decay": 0.05},
        ("lr", "b1", "b2", "eps", "weight_decay"),
    ),
    "adamw-amsgrad": (
        _betas(fdl.optim.adamw, amsgrad=True),
        {"lr": 0.1, "b1": 0.8, "b2": 0.9, "eps": 1e-3, "weight_decay": 0.1},
        ("lr", "b1", "b2", "eps", "weight_decay"),
    ),
    "rmsprop": (
        fdl.optim.rmsprop,
        {"lr": 0.01, "alpha": 0.9, "eps": 1e-3, "weight_decay": 0.1},
        ("lr", "alpha", "eps", "weight_decay"),
    ),
    "rmsprop-centered-momentum": (
        lambda **h: fdl.optim.rmsprop(**h, centered=True),
        {"lr": 0.01, "alpha": 0.9, "eps": 1e-3, "momentum": 0.5},
        ("lr", "alpha", "eps", "momentum"),
    ),
    "adagrad": (
        fdl.optim.adagrad,
        {
            "lr": 0.1,
            "lr_decay": 0.1,
            "weight_decay": 0.1,
            "initial_accumulator_value": 0.1,
            "eps": 1e-3,
        },
        ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"),
    ),
    "adamax": (
        _betas(fdl.optim.adamax),
        {"lr": 0.1, "b1": 0.9, "b2": 0.99, "eps": 1e-3, "weight_decay": 0.05},
        ("lr", "b1", "b2", "eps", "weight_decay"),
    ),
    "nadam": (
        _betas(fdl.optim.nadam),
        {
            "lr": 0.1,
            "b1": 0.9,
            "b2": 0.99,
            "eps": 1e-3,
            "weight_decay": 0.05,
            "momentum_decay": 4e-3,
        },
        ("lr", "b1", "b2", "eps", "weight_decay", "momentum_decay"),
    ),
    # rho_t <= 5 for t <= 5: the m-hat branch, where beta2 and eps have derivative 0
    "radam": (
        _betas(fdl.optim.radam),
        {"lr": 0.1, "b1": 0.9, "b2": 0.99, "eps": 1e-3, "weight_decay": 0.05},
        ("lr", "b1", "b2", "eps", "weight_decay"),
    ),
    # six steps (STEPS): the sixth is rectified (rho_6 = 5.39 at beta2 = 0.9, 5.38 / 5.40 at
    # the finite-difference points), so beta2 and eps enter through r_t and sqrt(v)
    "radam-rectified": (
        _betas(fdl.optim.radam, decoupled_weight_decay=True),
        {"lr": 0.05, "b1": 0.9, "b2": 0.9, "eps": 1e-3, "weight_decay": 0.05},
        ("lr", "b1", "b2", "eps", "weight_decay"),
    ),
    "adadelta": (
        fdl.optim.adadelta,
        {"lr": 1.0, "rho": 0.9, "eps": 1e-3, "weight_decay": 0.05},
        ("lr", "rho", "eps", "weight_decay"),
    ),
    "rprop": (lambda **h: fdl.optim.rprop(**h, etas=(0.4, 1.3)), {"lr": 0.05}, ("lr",)),
    "asgd": (
        lambda **h: fdl.optim.asgd(**h, t0=1.0),
        {"lr": 0.1, "lambd": 0.05, "alpha": 0.6, "weight_decay": 0.1},
        ("lr", "lambd", "alpha", "weight_decay"),
    ),
    "adafactor": (fdl.optim.adafactor, {"lr": 0.1, "weight_decay": 0.1}, ("lr", "weight_decay")),
    "sparse_adam": (fdl.optim.sparse_adam, {"lr": 0.1}, ("lr",)),
    # Muon on matrix views of the vector and scalar params, its Newton-Schulz in float64
    # (torch's bfloat16 rounds the update: not smooth enough for finite differences)
    "muon": (
        lambda **h: as_matrices(fdl.optim.muon(**h, ns_dtype=torch.float64)),
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1},
        ("lr", "momentum", "weight_decay"),
    ),
}
STEPS = {"radam-rectified": 6}  # entries that need more than K steps
NAMES = list(OPTIMIZERS)
HYPER = [(n, h) for n in NAMES for h in OPTIMIZERS[n][2]]
INDUCTOR = ["sgd-nesterov", "adam"]  # also compiled by inductor (slow): one momentum, one adaptive


def _steps(name: str) -> int:
    return STEPS.get(name, K)


def test_registry_covers_every_optimizer() -> None:
    covered = {n.split("-")[0] for n in NAMES} | {"adamw"}
    assert set(fdl.optim.alias.__all__) <= covered


@pytest.fixture(autouse=True, scope="module")
def _float64_one_thread() -> Iterator[None]:
    old_threads, old_dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old_dtype)
    torch.set_num_threads(old_threads)


def _data() -> tuple[dict[str, Tensor], Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(8, generator=g, dtype=torch.float64)
    p0 = {
        "w": torch.randn(3, generator=g, dtype=torch.float64),
        "b": torch.randn((), generator=g, dtype=torch.float64),
    }
    return p0, x, y


def _loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
    return torch.tanh(x @ p["w"] + p["b"] - y).pow(2).mean()


def _grad_eager(p: dict[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Plain autograd gradient that stays in the graph (``create_graph=True``)."""
    gs = torch.autograd.grad(_loss(p, x, y), list(p.values()), create_graph=True)
    return dict(zip(p, gs, strict=True))


def _unrolled(
    opt: Any, p: dict[str, Tensor], grad_fn: Callable[..., Any], data: Any = None, k: int = K
) -> Tensor:
    _, x, y = _data() if data is None else (None, *data)
    state = opt.init(p)
    for _ in range(k):
        updates, state = opt.update(grad_fn(p, x, y), state, p)
        p = fdl.optim.apply_updates(p, updates)
    return _loss(p, x, y)


def _func_grad(p, x, y):  # noqa: ANN001, ANN202
    return torch.func.grad(_loss)(p, x, y)


def _value(name: str, hp: dict[str, Any], p: dict[str, Tensor]) -> Tensor:
    """``L(θ_K)`` with float hyperparameters (the finite-difference reference's function)."""
    factory = OPTIMIZERS[name][0]
    with torch.no_grad():
        return _unrolled(factory(**hp), p, _func_grad, k=_steps(name))


def _fd(f: Callable[[float], Tensor], x: float) -> float:
    """Fourth-order central difference of ``f`` at ``x``, step ``H`` scaled to ``|x|`` below 1."""
    h = H * min(1.0, abs(x)) if x != 0 else H
    fp2, fp1, fm1, fm2 = (float(f(x + k * h)) for k in (2, 1, -1, -2))
    return (-fp2 + 8 * fp1 - 8 * fm1 + fm2) / (12 * h)


def _fd_params(name: str) -> dict[str, Tensor]:
    p0, _, _ = _data()
    hp = OPTIMIZERS[name][1]
    out = {}
    for key, leaf in p0.items():
        flat = torch.empty(leaf.numel(), dtype=torch.float64)
        for i in range(leaf.numel()):

            def f(v: float, key: str = key, i: int = i) -> Tensor:
                q = {k: t.clone() for k, t in p0.items()}
                q[key].view(-1)[i] = v
                return _value(name, hp, q)

            flat[i] = _fd(f, float(leaf.reshape(-1)[i]))
        out[key] = flat.reshape(leaf.shape)
    return out


_FD_CACHE: dict[str, dict[str, Tensor]] = {}


def _reference(name: str) -> dict[str, Tensor]:
    if name not in _FD_CACHE:
        _FD_CACHE[name] = _fd_params(name)
    return _FD_CACHE[name]


def _assert_close(got: Any, expected: Any, rtol: float = RTOL, atol: float = ATOL) -> None:
    fdl.tree.check_match(got, expected, got_name="got", expected_name="expected")
    for a, b in zip(fdl.tree.leaves(got), fdl.tree.leaves(expected), strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# with respect to the initial params, on every path
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_func_grad_wrt_params(name: str) -> None:
    """``torch.func.grad`` through K updates: the per-leaf path."""
    factory, hp, _ = OPTIMIZERS[name]
    p0, _, _ = _data()
    got = torch.func.grad(lambda p: _unrolled(factory(**hp), p, _func_grad, k=_steps(name)))(p0)
    _assert_close(got, _reference(name))


@pytest.mark.parametrize("per_leaf", [False, True], ids=["foreach", "per-leaf"])
@pytest.mark.parametrize("name", NAMES)
def test_autograd_wrt_params(name: str, per_leaf: bool) -> None:
    """Plain autograd through K eager updates: the foreach path, and the per-leaf one forced."""
    factory, hp, _ = OPTIMIZERS[name]
    p0, _, _ = _data()
    p = {k: v.clone().requires_grad_() for k, v in p0.items()}
    assert _foreach.use_foreach(list(p.values())) is True  # plain tensors take the foreach path
    with _foreach._per_leaf() if per_leaf else _nullcontext():
        loss = _unrolled(factory(**hp), p, _grad_eager, k=_steps(name))
    got = dict(zip(p, torch.autograd.grad(loss, list(p.values())), strict=True))
    _assert_close(got, _reference(name))


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _meta_gradient(name: str) -> Callable[..., Any]:
    """``(θ_0, hyperparameters, x, y) -> (dL/dθ_0, dL/dh)``, every tensor-able one an input."""
    factory, hp, _ = OPTIMIZERS[name]

    def unrolled(q: dict[str, Tensor], h: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return _unrolled(factory(**{**hp, **h}), q, _func_grad, (x, y), k=_steps(name))

    return torch.func.grad(unrolled, argnums=(0, 1))


def _check_compiled(name: str, backend: str) -> None:
    """One compile per optimizer: params and all hyperparameters checked, then no recompile.

    The compiled update code path (``is_compiling()``: per-leaf ops, materialized
    scalars, no validation) runs inside the transform. A second call with other
    hyperparameter values and other data must reuse the graph (hyperparameters
    are tensors) and equal the eager transform. Compiling the unrolled loss alone
    and differentiating it with autograd needs a double backward through the
    compiled graph, which AOTAutograd does not support (a RuntimeError, not a
    wrong value).
    """
    _, hp, tensor_names = OPTIMIZERS[name]
    p0, x, y = _data()
    torch._dynamo.reset()  # the compiled closures share one code object: no stale entries
    fn = torch.compile(_meta_gradient(name), backend=backend, fullgraph=True)
    hyper = {h: torch.tensor(hp[h]) for h in tensor_names}
    got_params, got_hyper = fn(p0, hyper, x, y)
    _assert_close(got_params, _reference(name))
    expected = {h: torch.tensor(_hyper_reference(name, h)) for h in tensor_names}
    _assert_close(got_hyper, expected)
    other = {h: v * 0.9 for h, v in hyper.items()}
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = fn(p0, other, 1.1 * x, y)
    _assert_close(again, _meta_gradient(name)(p0, other, 1.1 * x, y), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in INDUCTOR])
def test_compiled_meta_gradient(name: str) -> None:
    """``torch.compile(fullgraph=True)`` of the meta-gradient, for every optimizer.

    Backend ``eager``: Dynamo captures fdl's compiled code path in one graph (no
    graph break, no recompile for new hyperparameter values), which eager
    kernels run. AOTAutograd and inductor's kernels cost about ten times more
    to build per optimizer; :func:`test_compiled_inductor` runs them (and this
    capture) for the two others.
    """
    _check_compiled(name, "eager")


@pytest.mark.parametrize("name", INDUCTOR)
def test_compiled_inductor(name: str) -> None:
    """The same with inductor's generated kernels, for one momentum and one adaptive rule."""
    _check_compiled(name, "inductor")


@pytest.mark.parametrize("name", ["sgd-nesterov", "adam"])
def test_make_update_eager_and_donation(name: str) -> None:
    """``make_update`` steps are differentiable; donating buffers autograd needs is refused."""
    factory, hp, _ = OPTIMIZERS[name]
    p0, x, y = _data()
    p = {k: v.clone().requires_grad_() for k, v in p0.items()}
    opt = factory(**hp)
    step = fdl.optim.make_update(opt, compile=False)
    q, state = p, opt.init(p)
    for _ in range(K):
        q, state = step(_grad_eager(q, x, y), state, q)
    got = dict(zip(p, torch.autograd.grad(_loss(q, x, y), list(p.values())), strict=True))
    _assert_close(got, _reference(name))
    # donation writes the results into the params passed in: under autograd that is an
    # in-place write to a leaf that requires grad (or to a saved value), which torch rejects
    donated = fdl.optim.make_update(opt, compile=False, donate=True)
    with pytest.raises(RuntimeError):
        q, state = donated(_grad_eager(p, x, y), opt.init(p), p)
        torch.autograd.grad(_loss(q, x, y), list(p.values()))


def test_jacrev_and_vjp_wrt_params() -> None:
    """``jacrev`` of the final params (a vector output) and a ``vjp``, vs finite differences."""
    name = "adam"
    factory, hp, _ = OPTIMIZERS[name]
    p0, x, y = _data()

    def final_w(w: Tensor) -> Tensor:
        p = {"w": w, "b": p0["b"]}
        opt, state = factory(**hp), None
        state = opt.init(p)
        for _ in range(K):
            updates, state = opt.update(torch.func.grad(_loss)(p, x, y), state, p)
            p = fdl.optim.apply_updates(p, updates)
        return p["w"]

    jac = torch.func.jacrev(final_w)(p0["w"])  # (3, 3)
    expected = torch.empty(3, 3)
    for j in range(3):

        def f(v: float, j: int = j) -> Tensor:
            w = p0["w"].clone()
            w[j] = v
            with torch.no_grad():
                return final_w(w)

        for i in range(3):
            expected[i, j] = _fd(lambda v, i=i, f=f: f(v)[i], float(p0["w"][j]))
    torch.testing.assert_close(jac, expected, rtol=RTOL, atol=ATOL)
    out, vjp_fn = torch.func.vjp(final_w, p0["w"])
    cot = torch.tensor([1.0, -2.0, 0.5])
    torch.testing.assert_close(vjp_fn(cot)[0], cot @ expected, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------
# with respect to hyperparameters passed as tensors
# ---------------------------------------------------------------------------


_FD_HYPER: dict[tuple[str, str], float] = {}


def _hyper_reference(name: str, hyper: str) -> float:
    """d L(θ_K) / d hyperparameter by finite differences of the float path (cached)."""
    if (name, hyper) not in _FD_HYPER:
        hp = OPTIMIZERS[name][1]
        p0, _, _ = _data()
        _FD_HYPER[name, hyper] = _fd(lambda v: _value(name, {**hp, hyper: v}, p0), hp[hyper])
    return _FD_HYPER[name, hyper]


@pytest.mark.parametrize(("name", "hyper"), HYPER)
def test_grad_wrt_tensor_hyperparameter(name: str, hyper: str) -> None:
    """d L(θ_K) / d hyperparameter, by ``torch.func.grad`` and by eager autograd."""
    factory, hp, _ = OPTIMIZERS[name]
    p0, _, _ = _data()
    expected = torch.tensor(_hyper_reference(name, hyper))
    k = _steps(name)

    def loss_of(h: Tensor) -> Tensor:
        return _unrolled(factory(**{**hp, hyper: h}), p0, _func_grad, k=k)

    got = torch.func.grad(loss_of)(torch.tensor(hp[hyper]))
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=ATOL)

    h = torch.tensor(hp[hyper], requires_grad=True)
    p = {k: v.clone().requires_grad_() for k, v in p0.items()}
    loss = _unrolled(factory(**{**hp, hyper: h}), p, _grad_eager, k=k)
    (got_eager,) = torch.autograd.grad(loss, h)
    torch.testing.assert_close(got_eager, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_tensor_hyperparameters_without_grad_match_floats(name: str) -> None:
    """Tensors that need no gradient take the eager foreach path and give the float values."""
    factory, hp, tensor_names = OPTIMIZERS[name]
    p0, x, y = _data()
    as_tensors = {**hp, **{h: torch.tensor(hp[h]) for h in tensor_names}}
    runs = []
    for hyper in (hp, as_tensors):
        opt = factory(**hyper)
        p, state = p0, opt.init(p0)
        for _ in range(_steps(name)):
            updates, state = opt.update(_func_grad(p, x, y), state, p)
            p = fdl.optim.apply_updates(p, updates)
        runs.append(p)
    # the same formula with the scalars as float64 tensors instead of numbers: rounding only
    _assert_close(runs[1], runs[0], rtol=1e-13, atol=1e-15)


def test_tensor_hyperparameter_is_validated() -> None:
    with pytest.raises(ValueError, match="beta1"):
        fdl.optim.adam(betas=(torch.tensor(1.5), 0.999))
    with pytest.raises(ValueError, match="momentum"):
        fdl.optim.sgd(momentum=torch.tensor(-0.1))
    with pytest.raises(ValueError, match="weight_decay"):
        fdl.optim.adamw(weight_decay=torch.tensor(-1.0))


# ---------------------------------------------------------------------------
# independent hand-written references (textbook formulas, plain autograd)
# ---------------------------------------------------------------------------


def _textbook_sgd_nesterov(p: dict[str, Tensor], lr: float, mu: float, wd: float) -> Tensor:
    _, x, y = _data()
    buf: dict[str, Tensor] = {}
    for t in range(K):
        g = _grad_eager(p, x, y)
        g = {k: g[k] + wd * p[k] for k in p}
        buf = {k: g[k] if t == 0 else mu * buf[k] + g[k] for k in p}
        p = {k: p[k] - lr * (g[k] + mu * buf[k]) for k in p}
    return _loss(p, x, y)


def _textbook_adam(
    p: dict[str, Tensor], lr: float, b1: float, b2: float, eps: float, wd: float
) -> Tensor:
    _, x, y = _data()
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v2 = {k: torch.zeros_like(v) for k, v in p.items()}
    for t in range(1, K + 1):
        g = _grad_eager(p, x, y)
        g = {k: g[k] + wd * p[k] for k in p}
        m = {k: b1 * m[k] + (1 - b1) * g[k] for k in p}
        v2 = {k: b2 * v2[k] + (1 - b2) * g[k] ** 2 for k in p}
        p = {
            k: p[k] - lr * (m[k] / (1 - b1**t)) / (torch.sqrt(v2[k] / (1 - b2**t)) + eps) for k in p
        }
    return _loss(p, x, y)


@pytest.mark.parametrize(
    ("name", "textbook"),
    [
        (
            "sgd-nesterov",
            lambda p, hp: _textbook_sgd_nesterov(p, hp["lr"], hp["momentum"], hp["weight_decay"]),
        ),
        (
            "adam",
            lambda p, hp: _textbook_adam(
                p, **{k: hp[k] for k in ("lr", "b1", "b2", "eps")}, wd=hp["weight_decay"]
            ),
        ),
    ],
)
def test_matches_textbook_unrolled_autograd(name: str, textbook: Callable[..., Tensor]) -> None:
    factory, hp, _ = OPTIMIZERS[name]
    p0, _, _ = _data()
    p = {k: v.clone().requires_grad_() for k, v in p0.items()}
    expected = torch.autograd.grad(textbook(p, hp), list(p.values()))
    got = torch.func.grad(lambda q: _unrolled(factory(**hp), q, _func_grad))(p0)
    _assert_close(got, dict(zip(p, expected, strict=True)), rtol=1e-12, atol=1e-14)
    _assert_close(_reference(name), got)  # and the two references agree


def test_detaching_path_is_caught() -> None:
    """The comparison can fail: an update that cuts its gradient graph is rejected."""
    factory, hp, _ = OPTIMIZERS["adam"]
    p0, _, _ = _data()
    inner = factory(**hp)

    def detached_update(g: Any, state: Any, params: Any = None) -> Any:
        u, s = inner.update(g, state, params)
        return fdl.tree.map(lambda t: t.detach(), u), s

    cut = fdl.optim.GradientTransformation(inner.init, detached_update)
    got = torch.func.grad(lambda q: _unrolled(cut, q, _func_grad))(p0)
    with pytest.raises(AssertionError):
        _assert_close(got, _reference("adam"))


# ---------------------------------------------------------------------------
# Adam's sqrt at zero: eps_root
# ---------------------------------------------------------------------------


def _adam_eps_root(eps_root: float) -> Any:
    return fdl.optim.chain(
        fdl.optim.scale_by_adam(0.9, 0.999, 1e-8, eps_root=eps_root),
        fdl.optim.scale_by_learning_rate(0.1),
    )


def _meta_grad_with_dead_param(opt: Any, k: int = K) -> dict[str, Tensor]:
    """Second-order gradient where the parameter 'dead' sits at 0, where its gradient is 0.

    Its gradient ``g = dead`` is 0 at every step but depends on it, so ``v = 0``
    and the chain rule meets ``sqrt'(0) · dv/d(dead) = inf · 0``.
    """
    _, x, y = _data()

    def loss(p: dict[str, Tensor]) -> Tensor:
        return _loss({"w": p["w"], "b": p["b"]}, x, y) + 0.5 * p["dead"].pow(2).sum()

    def unrolled(p: dict[str, Tensor]) -> Tensor:
        state = opt.init(p)
        for _ in range(k):
            updates, state = opt.update(torch.func.grad(loss)(p), state, p)
            p = fdl.optim.apply_updates(p, updates)
        return loss(p) + p["dead"].sum()

    p0, _, _ = _data()
    return torch.func.grad(unrolled)({**p0, "dead": torch.zeros(2)})


def test_eps_root_zero_gives_nan_at_zero_gradient() -> None:
    """sqrt'(0) = inf: with eps_root = 0 the meta-gradient of a zero-gradient entry is NaN."""
    got = _meta_grad_with_dead_param(_adam_eps_root(0.0))
    assert torch.isnan(got["dead"]).all()


def test_eps_root_keeps_meta_gradient_finite() -> None:
    got = _meta_grad_with_dead_param(_adam_eps_root(1e-16))
    assert all(torch.isfinite(t).all() for t in got.values())
    # the live entries are unaffected by 1e-16 at this tolerance: compare with eps_root = 0
    live = _meta_grad_with_dead_param(_adam_eps_root(0.0))
    _assert_close({k: got[k] for k in "wb"}, {k: live[k] for k in "wb"}, rtol=1e-12, atol=0)


def test_eps_root_zero_is_torch_adam() -> None:
    """eps_root = 0 is the unchanged update: bit for bit fdl.optim.adam, and torch's Adam."""
    p0, x, y = _data()
    tparams = [p0["w"].clone().requires_grad_(), p0["b"].clone().requires_grad_()]
    topt = torch.optim.Adam(tparams, lr=0.1, foreach=False)
    a, b = _adam_eps_root(0.0), fdl.optim.adam(0.1)
    pa, pb, sa, sb = p0, p0, a.init(p0), b.init(p0)
    for _ in range(5):
        ua, sa = a.update(_func_grad(pa, x, y), sa, pa)
        ub, sb = b.update(_func_grad(pb, x, y), sb, pb)
        pa, pb = fdl.optim.apply_updates(pa, ua), fdl.optim.apply_updates(pb, ub)
        topt.zero_grad()
        _loss(dict(zip("wb", tparams, strict=True)), x, y).backward()
        topt.step()
    for k in "wb":
        assert torch.equal(pa[k], pb[k])
    _assert_close(pa, dict(zip("wb", (t.detach() for t in tparams), strict=True)), 1e-12, 1e-14)


def test_eps_root_formula() -> None:
    """eps_root > 0 is sqrt(v_hat + eps_root) in the denominator (Optax's placement)."""
    g = torch.tensor([0.5, -2.0, 0.0])
    tx = fdl.optim.scale_by_adam(0.9, 0.99, 1e-3, eps_root=0.25)
    u, _ = tx.update({"w": g}, tx.init({"w": torch.zeros(3)}))
    m_hat, v_hat = g, g * g  # one step: the bias corrections undo the (1 - β) factors
    torch.testing.assert_close(u["w"], m_hat / (torch.sqrt(v_hat + 0.25) + 1e-3))


# ---------------------------------------------------------------------------
# non-differentiable points: what fdl does (docs/meta.md)
# ---------------------------------------------------------------------------

# entries whose update takes sqrt of a second moment that is exactly 0 where a gradient entry
# is 0 at every step: sqrt'(0) = inf meets dv/dg = 0 and the meta-gradient there is NaN
# (RAdam also before rectification: its unused adaptive branch is computed, then masked)
SQRT_OF_ZERO = {
    "adam",
    "adamw-amsgrad",
    "rmsprop",
    "rmsprop-centered-momentum",
    "nadam",
    "radam",
    "radam-rectified",
}


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradient_entry(name: str) -> None:
    """A parameter whose gradient is 0 at every step: NaN for ``SQRT_OF_ZERO``, finite otherwise.

    Finite: SGD; Adagrad with ``initial_accumulator_value > 0`` (the root of
    ``S_0 + g²``); Adadelta (``sqrt(E + ε)``); Adamax (``|g|`` has derivative 0
    at 0, torch's ``abs`` rule). The other entries stay finite in every case.
    """
    factory, hp, _ = OPTIMIZERS[name]
    got = _meta_grad_with_dead_param(factory(**hp), _steps(name))
    assert all(torch.isfinite(got[k]).all() for k in "wb")
    assert bool(torch.isnan(got["dead"]).all()) is (name in SQRT_OF_ZERO)


def test_amsgrad_max_at_a_tie_splits_the_gradient() -> None:
    """``max(v̂_{t-1}, v_t)`` at an exact tie: torch's rule sends half the cotangent to each side.

    With ``g = 0`` the new ``v = β2 ν`` (exactly); a state with ``ν_max = β2 ν``
    makes the tie. ``∂u/∂ν_max`` is then half of ``∂u/∂ν̂`` and ``∂u/∂ν`` is the
    other half times ``β2``; away from a tie one of them is 0.
    """
    b2 = 0.5
    tx = fdl.optim.scale_by_adam(0.9, b2, 1e-3, amsgrad=True)
    g = {"w": torch.zeros(2)}
    mu, nu = torch.tensor([0.3, -0.2]), torch.tensor([0.4, 0.1])

    def u_of(nu: Tensor, nu_max: Tensor) -> Tensor:
        state = fdl.optim.ScaleByAdamState(torch.tensor(1), {"w": mu}, {"w": nu}, {"w": nu_max})
        return tx.update(g, state)[0]["w"].sum()

    d_nu, d_max = torch.func.grad(u_of, argnums=(0, 1))(nu, b2 * nu)
    # the full derivative w.r.t. v-hat, from the one-argument formula u(v-hat)
    t = 2.0
    m_hat = (0.9 * mu) / (1 - 0.9**t)
    d_vhat = torch.func.grad(lambda vh: (m_hat / (torch.sqrt(vh / (1 - b2**t)) + 1e-3)).sum())(
        b2 * nu
    )
    torch.testing.assert_close(d_max, 0.5 * d_vhat, rtol=1e-12, atol=0)
    torch.testing.assert_close(d_nu, 0.5 * b2 * d_vhat, rtol=1e-12, atol=0)
    d_nu, d_max = torch.func.grad(u_of, argnums=(0, 1))(nu, 2 * nu)  # no tie: all to nu_max
    assert torch.equal(d_nu, torch.zeros(2)) and bool((d_max != 0).all())


# ---------------------------------------------------------------------------
# hypergradient descent (Baydin et al., 2018) and the MAML example
# ---------------------------------------------------------------------------


def test_hypergradient_descent_learns_lr() -> None:
    """The lr learned online by differentiating the loss through one SGD update.

    ``h_t = dL(θ_t(η)) / dη`` with ``θ_t = θ_{t-1} - η g_{t-1}``, which is
    ``-g_t · g_{t-1}`` for SGD (Baydin et al., eq. 5): the autograd value is
    checked against that closed form, and a too-small lr grows.
    """
    _, x, y = _data()
    params = {"w": torch.zeros(3), "b": torch.zeros(())}
    lr, beta = torch.tensor(1e-3), 1e-2
    losses = []
    for _ in range(30):
        g_prev = _func_grad(params, x, y)

        def after_one_step(eta: Tensor, params=params, g_prev=g_prev) -> Tensor:  # noqa: ANN001
            opt = fdl.optim.sgd(lr=eta)
            updates, _ = opt.update(g_prev, opt.init(params), params)
            return _loss(fdl.optim.apply_updates(params, updates), x, y)

        hyper = torch.func.grad(after_one_step)(lr)
        opt = fdl.optim.sgd(lr=lr)
        updates, _ = opt.update(g_prev, opt.init(params), params)
        new_params = fdl.optim.apply_updates(params, updates)
        g_now = _func_grad(new_params, x, y)
        closed_form = -fdl.tree.vdot(g_now, g_prev)
        torch.testing.assert_close(hyper, closed_form, rtol=1e-12, atol=1e-15)
        lr = lr - beta * hyper  # hypergradient step on the lr
        params = new_params
        losses.append(float(_loss(params, x, y)))
    assert float(lr) > 10 * 1e-3
    assert losses[-1] < losses[0]


def _load_example() -> Any:
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "maml_sinusoid.py"
    spec = importlib.util.spec_from_file_location("maml_sinusoid", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["maml_sinusoid"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_maml_example_quick(tmp_path: pathlib.Path) -> None:
    mod = _load_example()
    results = mod.main(["--quick", "--out", str(tmp_path)])
    for variant in ("maml", "fomaml", "pretrain"):
        curve = results[variant]
        assert len(curve) == results["inner_steps_eval"] + 1
        assert all(math.isfinite(v) for v in curve)
    # adaptation helps the meta-learned initialisation even after a short meta-training
    assert results["maml"][-1] < results["maml"][0]
    assert (tmp_path / "maml_sinusoid.json").exists()


def test_maml_example_adam_inner_compiled() -> None:
    """``--inner adam --compile``: one fullgraph meta-step, no recompile, the eager step's values.

    Backend ``eager`` (Dynamo's capture; building inductor kernels for this graph
    is slow on a loaded machine). Adam's state is per task under ``vmap``.
    """
    mod = _load_example()
    args = mod.main.__globals__["argparse"].Namespace(
        meta_lr=1e-3, shots=3, inner_steps=1, inner_lr=0.01, inner="adam", compile=False
    )
    outer, eager_step = mod.make_meta_step("maml", args)
    args.compile, args.backend = True, "eager"
    _, compiled_step = mod.make_meta_step("maml", args)
    params = mod.MODEL.init(fdl.random.key(0))
    state = outer.init(params)
    q_eager, q_compiled, s_eager, s_compiled = params, params, state, state
    for i in range(2):  # the second call: new data, new state, same graph
        x, y, _ = mod.sample_tasks(fdl.random.key(i + 1), 2, 6)
        q_eager, s_eager = eager_step(q_eager, s_eager, x, y)
        with torch._dynamo.config.patch(error_on_recompile=True):
            q_compiled, s_compiled = compiled_step(q_compiled, s_compiled, x, y)
    assert all(torch.isfinite(t).all() for t in fdl.tree.leaves(q_eager))
    _assert_close((q_compiled, s_compiled), (q_eager, s_eager), rtol=1e-10, atol=1e-12)
    assert not torch.equal(q_eager["0"]["weight"], params["0"]["weight"])  # the step moved it


def test_docs_meta_blocks_run() -> None:
    """The python blocks of docs/meta.md run, and the hypergradient loop raises the lr."""
    ns = run_python_blocks("meta.md")
    assert torch.isfinite(ns["lr_grad"]) and all(
        torch.isfinite(t).all() for t in ns["meta_grad"].values()
    )
    assert float(ns["lr"]) > 1e-3
