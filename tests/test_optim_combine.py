"""The Optax combinators of fdl.optim against their references, and their generic properties.

One registry: (fdl combinator factory, reference, [kwargs, ...], state class). The
references are ``torch.optim`` with param groups (for ``partition``) and Optax itself
(float64, ``jax_enable_x64``), gradients always from the same torch loss. Every
entry's trajectory must equal its reference's for 50 steps (float64, rtol 1e-10:
rounding differences of about 1e-16 per operation, amplified by at most a few
hundred over 50 steps on this well-conditioned problem), and every entry must be
pure, keep its state structure, compile to one graph over 20 steps, and reject a
foreign state or mismatched gradients with a message naming what is wrong.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

import fdl
from fdl.optim import LookaheadParams
from fdl.testing import assert_pure, assert_trees_close, optimizer_problem

STEPS = 50
RTOL, ATOL = 1e-10, 1e-12


@pytest.fixture(autouse=True, scope="module")
def _setup() -> Iterator[None]:
    """Float64 in JAX (Optax's reference runs), one intra-op thread (tiny tensors)."""
    import jax

    old_x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
    jax.config.update("jax_enable_x64", old_x64)


# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------


def _is_bias(path: str) -> bool:
    return path.endswith("bias")


def _labels(params: Any) -> Any:
    """No weight decay on biases (the norm-parameter case of a real model)."""
    return fdl.tree.map_with_path(lambda p, _: "no_decay" if _is_bias(p) else "decay", params)


class TorchGroups(NamedTuple):
    """``cls(groups(named leaves), **kwargs)``: torch.optim with param groups."""

    cls: type[torch.optim.Optimizer]
    groups: Callable[[dict[str, torch.Tensor]], list[dict[str, Any]]]
    kwargs: dict[str, Any]


class Optax(NamedTuple):
    """An Optax transformation built by ``build()`` (Optax imported lazily)."""

    build: Callable[[], Any]


def _decay_groups(wd: float) -> Callable[[dict[str, torch.Tensor]], list[dict[str, Any]]]:
    def groups(named: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        return [
            {"params": [x for n, x in named.items() if not _is_bias(n)], "weight_decay": wd},
            {"params": [x for n, x in named.items() if _is_bias(n)], "weight_decay": 0.0},
        ]

    return groups


def _layer_groups(lr0: float, lr2: float) -> Callable[[dict[str, torch.Tensor]], list[dict]]:
    def groups(named: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        return [
            {"params": [x for n, x in named.items() if n.startswith("0.")], "lr": lr0},
            {"params": [x for n, x in named.items() if n.startswith("2.")], "lr": lr2},
        ]

    return groups


def _optax() -> Any:
    import optax

    return optax


def _jnp() -> Any:
    import jax.numpy as jnp

    return jnp


def _ox_labels(params: Any) -> Any:
    import jax

    return jax.tree_util.tree_map_with_path(
        lambda path, _: "no_decay" if path[-1].key == "bias" else "decay", params
    )


# ---------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------


class Entry(NamedTuple):
    make: Callable[..., Any]  # kwargs -> fdl transformation
    reference: Callable[..., TorchGroups | Optax]  # kwargs -> reference
    kwargs: list[dict[str, Any]]
    state_type: type  # the class of the combinator's own state
    own_state: Callable[[Any], Any] = lambda s: s  # where that state sits in the full state
    lookahead: bool = False  # params are LookaheadParams


F = fdl.optim

COMBINATORS: dict[str, Entry] = {
    "partition": Entry(
        lambda lr, wd: F.partition(
            {"decay": F.adamw(lr, weight_decay=wd), "no_decay": F.adamw(lr, weight_decay=0.0)},
            _labels,
        ),
        lambda lr, wd: TorchGroups(torch.optim.AdamW, _decay_groups(wd), {"lr": lr}),
        [{"lr": 0.01, "wd": 0.1}, {"lr": 0.03, "wd": 0.5}],
        F.PartitionState,
    ),
    "multi_transform-prefix-labels": Entry(
        lambda lr0, lr2: F.multi_transform(
            {"a": F.sgd(lr0, momentum=0.9), "b": F.sgd(lr2, momentum=0.9)}, {"0": "a", "2": "b"}
        ),
        lambda lr0, lr2: TorchGroups(torch.optim.SGD, _layer_groups(lr0, lr2), {"momentum": 0.9}),
        [{"lr0": 0.1, "lr2": 0.02}],
        F.MultiTransformState,
    ),
    "inject_hyperparams": Entry(
        lambda lr, b1, b2: F.inject_hyperparams(F.adam)(lr=lr, betas=(b1, b2)),
        lambda lr, b1, b2: Optax(
            lambda: _optax().inject_hyperparams(_optax().adam)(learning_rate=lr, b1=b1, b2=b2)
        ),
        [{"lr": 0.01, "b1": 0.9, "b2": 0.999}, {"lr": 0.02, "b1": 0.8, "b2": 0.99}],
        F.InjectHyperparamsState,
    ),
    "inject_hyperparams-schedule": Entry(
        lambda lr, gamma: F.inject_hyperparams(F.sgd)(
            lr=lambda c: lr * gamma ** c.to(torch.float64), momentum=0.9
        ),
        lambda lr, gamma: Optax(
            lambda: _optax().inject_hyperparams(_optax().sgd)(
                learning_rate=lambda c: lr * gamma**c, momentum=0.9
            )
        ),
        [{"lr": 0.1, "gamma": 0.95}],
        F.InjectHyperparamsState,
    ),
    "lookahead": Entry(
        lambda k, alpha, reset=False: F.lookahead(
            F.sgd(0.05, momentum=0.9), sync_period=k, slow_step_size=alpha, reset_state=reset
        ),
        lambda k, alpha, reset=False: Optax(
            lambda: _optax().lookahead(
                _optax().sgd(0.05, momentum=0.9), k, alpha, reset_state=reset
            )
        ),
        [{"k": 5, "alpha": 0.5}, {"k": 3, "alpha": 0.8, "reset": True}],
        F.LookaheadState,
        lookahead=True,
    ),
    "ema": Entry(
        lambda decay, debias=True: F.chain(F.ema(decay, debias), F.scale_by_learning_rate(0.05)),
        lambda decay, debias=True: Optax(
            lambda: _optax().chain(_optax().ema(decay, debias), _optax().scale(-0.05))
        ),
        [{"decay": 0.9}, {"decay": 0.5, "debias": False}],
        F.EmaState,
        own_state=lambda s: s[0],
    ),
    "MultiSteps": Entry(
        lambda k, mean=True: F.MultiSteps(F.adam(0.01), every_k_schedule=k, use_grad_mean=mean),
        lambda k, mean=True: Optax(
            lambda: _optax().MultiSteps(
                _optax().adam(0.01),
                every_k_schedule=k,
                use_grad_mean=mean,
                accumulator_dtype=_jnp().float64,
            )
        ),
        [{"k": 3}, {"k": 2, "mean": False}],
        F.MultiStepsState,
    ),
    "MultiSteps-every-k-schedule": Entry(
        # 2 micro-steps per update for the first 3 updates, then 4
        lambda: F.MultiSteps(F.sgd(0.05, momentum=0.9), lambda s: torch.where(s < 3, 2, 4)),
        lambda: Optax(
            lambda: _optax().MultiSteps(
                _optax().sgd(0.05, momentum=0.9),
                lambda s: _jnp().where(s < 3, 2, 4),
                accumulator_dtype=_jnp().float64,
            )
        ),
        [{}],
        F.MultiStepsState,
    ),
    # compositions
    "lookahead(inject_hyperparams(adam))": Entry(
        lambda: F.lookahead(F.inject_hyperparams(F.adam)(lr=0.01), 4, 0.5),
        lambda: Optax(
            lambda: _optax().lookahead(
                _optax().inject_hyperparams(_optax().adam)(learning_rate=0.01), 4, 0.5
            )
        ),
        [{}],
        F.LookaheadState,
        lookahead=True,
    ),
    "multi_steps(chain(ema, partition))": Entry(
        lambda: F.multi_steps(
            F.chain(
                F.ema(0.8),
                F.partition(
                    {"decay": F.adamw(0.01, weight_decay=0.2), "no_decay": F.adam(0.01)}, _labels
                ),
            ),
            2,
        ),
        lambda: Optax(
            lambda: (
                _optax()
                .MultiSteps(
                    _optax().chain(
                        _optax().ema(0.8),
                        _optax().partition(
                            {
                                "decay": _optax().adamw(0.01, weight_decay=0.2),
                                "no_decay": _optax().adam(0.01),
                            },
                            _ox_labels,
                        ),
                    ),
                    2,
                    accumulator_dtype=_jnp().float64,
                )
                .gradient_transformation()
            )
        ),
        [{}],
        F.MultiStepsState,
    ),
}
CASES = [
    pytest.param(name, i, id=f"{name}-{i}")
    for name, entry in COMBINATORS.items()
    for i in range(len(entry.kwargs))
]
NAMES = list(COMBINATORS)


def _make(name: str, i: int = 0) -> Any:
    entry = COMBINATORS[name]
    return entry.make(**entry.kwargs[i])


# ---------------------------------------------------------------------------
# running fdl and the references on one float64 problem
# ---------------------------------------------------------------------------


def _problem() -> tuple[Any, Callable[[Any], torch.Tensor]]:
    return optimizer_problem()  # the float64 5-8-2 tanh MLP ("0"/"2", weight/bias)


def _fdl_run(tx: Any, lookahead: bool, steps: int = STEPS) -> list[Any]:
    params, loss = _problem()
    if lookahead:
        params = LookaheadParams.init_synced(params)
    state = tx.init(params)
    out = []
    for _ in range(steps):
        grads = torch.func.grad(loss)(params.fast if lookahead else params)
        updates, state = tx.update(grads, state, params)
        params = fdl.optim.apply_updates(params, updates)
        out.append(params)
    return out


def _torch_run(ref: TorchGroups, steps: int = STEPS) -> list[Any]:
    params, loss = _problem()
    lvs, treedef = fdl.tree.flatten(params)
    leaves = [x.detach().clone().requires_grad_(True) for x in lvs]
    named = dict(zip(fdl.tree.paths(params), leaves, strict=True))
    opt = ref.cls(ref.groups(named), **ref.kwargs)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss(fdl.tree.unflatten(treedef, leaves)).backward()
        opt.step()
        out.append(fdl.tree.unflatten(treedef, [x.detach().clone() for x in leaves]))
    return out


def _to_jax(t: Any) -> Any:
    jnp = _jnp()
    return fdl.tree.map(lambda x: jnp.asarray(x.detach().numpy()), t)


def _to_torch(t: Any) -> Any:
    import jax

    return jax.tree.map(lambda x: torch.from_numpy(np.array(x)), t)


def _optax_run(ref: Optax, lookahead: bool, steps: int = STEPS) -> list[Any]:
    import jax

    optax = _optax()
    params, loss = _problem()
    tx = ref.build()
    p = _to_jax(params)
    if lookahead:
        p = optax.LookaheadParams.init_synced(p)
    state = tx.init(p)
    update = jax.jit(tx.update)  # one trace: op-by-op Optax is slow
    out = []
    for _ in range(steps):
        at = _to_torch(p.fast if lookahead else p)
        grads = _to_jax(torch.func.grad(loss)(at))
        updates, state = update(grads, state, p)
        p = optax.apply_updates(p, updates)
        t = _to_torch(p)
        out.append(LookaheadParams(t.fast, t.slow) if lookahead else t)
    return out


@functools.cache
def _reference_run(name: str, i: int) -> list[Any]:
    entry = COMBINATORS[name]
    ref = entry.reference(**entry.kwargs[i])
    if isinstance(ref, TorchGroups):
        return _torch_run(ref)
    return _optax_run(ref, entry.lookahead)


def _grads_for(name: str, params: Any, seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    target = params.fast if COMBINATORS[name].lookahead else params
    return fdl.tree.map(lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype), target)


def _params_for(name: str) -> Any:
    params, _ = _problem()
    return LookaheadParams.init_synced(params) if COMBINATORS[name].lookahead else params


# ---------------------------------------------------------------------------
# parity with the reference, step for step
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "i"), CASES)
def test_matches_reference_step_for_step(name: str, i: int) -> None:
    """50 float64 steps equal torch.optim param groups / Optax at every step (1e-10)."""
    ours = _fdl_run(_make(name, i), COMBINATORS[name].lookahead)
    theirs = _reference_run(name, i)
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
        assert_trees_close(a, b, rtol=RTOL, atol=ATOL, msg=f"{name} step {step}")
    # the trajectory moved: a wrong combinator cannot pass by standing still
    start = _params_for(name)
    assert not fdl.tree.allclose(ours[-1], start, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------
# generic properties
# ---------------------------------------------------------------------------


def _storages(t: Any) -> set[int]:
    return {
        x.untyped_storage().data_ptr()
        for x in fdl.tree.leaves(t)
        if isinstance(x, torch.Tensor) and x.numel() > 0
    }


@pytest.mark.parametrize("name", NAMES)
def test_pure_and_shares_no_storage(name: str) -> None:
    """No input is modified; state and updates share no storage with params, grads or
    the old state (so any of them may be donated or written to afterwards)."""
    tx = _make(name)
    params = _params_for(name)
    state = assert_pure(tx.init, params)
    assert not _storages(state) & _storages(params), "init's state aliases the params"
    for k in range(3):
        grads = _grads_for(name, params, k)
        updates, new_state = assert_pure(tx.update, grads, state, params)
        inputs = _storages(params) | _storages(grads) | _storages(state)
        assert not _storages(updates) & inputs, f"updates alias an input at step {k + 1}"
        assert not _storages(new_state) & inputs, f"the new state aliases an input at step {k + 1}"
        params, state = fdl.optim.apply_updates(params, updates), new_state


@pytest.mark.parametrize("name", NAMES)
def test_state_structure_is_stable(name: str) -> None:
    """The state is the entry's NamedTuple of tensors, with the same structure at every step."""
    entry = COMBINATORS[name]
    tx = _make(name)
    params = _params_for(name)
    state = tx.init(params)
    assert type(entry.own_state(state)) is entry.state_type
    structure = fdl.tree.structure(state)
    for k in range(4):
        updates, state = tx.update(_grads_for(name, params, k), state, params)
        params = fdl.optim.apply_updates(params, updates)
        assert fdl.tree.structure(state) == structure, f"state structure changed at step {k + 1}"
        assert all(isinstance(x, torch.Tensor) for x in fdl.tree.leaves(state))
        assert fdl.tree.structure(updates) == fdl.tree.structure(params)


class _CountingBackend:
    """A torch.compile backend that counts the graphs it is given."""

    def __init__(self, inner: str | None = None) -> None:
        self.graphs = 0
        self.inner = inner

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.graphs += 1
        if self.inner == "inductor":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        return gm.forward


def _check_compiles_once(
    tx: Any,
    params: Any,
    grads_at: Callable[[Any, int], Any],
    *,
    inner: str | None = None,
    between: Callable[[Any, int], Any] = lambda s, k: s,
    steps: int = 20,
) -> None:
    backend = _CountingBackend(inner)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(tx.update, backend=backend, fullgraph=True)
    state_c = state_e = tx.init(params)
    params_c = params_e = params
    with torch._dynamo.config.patch(error_on_recompile=True):
        _steps(compiled, tx, between, grads_at, state_c, state_e, params_c, params_e, steps)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs == 1, f"{graphs} graphs over {steps} steps"
    if inner is None:  # inductor may restart its analysis: the backend then sees a graph twice
        assert backend.graphs == 1, f"{backend.graphs} graphs over {steps} steps"


def _steps(
    compiled: Any,
    tx: Any,
    between: Callable[[Any, int], Any],
    grads_at: Callable[[Any, int], Any],
    state_c: Any,
    state_e: Any,
    params_c: Any,
    params_e: Any,
    steps: int,
) -> None:
    """``steps`` compiled and eager updates side by side, equal at every step."""
    for k in range(steps):
        state_c, state_e = between(state_c, k), between(state_e, k)
        grads = grads_at(params_e, k)
        u_c, state_c = compiled(grads, state_c, params_c)
        u_e, state_e = tx.update(grads, state_e, params_e)
        params_c = fdl.optim.apply_updates(params_c, u_c)
        params_e = fdl.optim.apply_updates(params_e, u_e)
        assert_trees_close(params_c, params_e, rtol=RTOL, atol=ATOL, msg=f"step {k + 1}")
        assert_trees_close(state_c, state_e, rtol=RTOL, atol=ATOL, msg=f"state, step {k + 1}")


@pytest.mark.parametrize("name", NAMES)
def test_compiles_once_over_20_steps(name: str) -> None:
    """``update`` traces with fullgraph=True; one graph serves 20 steps; values as eager."""
    _check_compiles_once(_make(name), _params_for(name), lambda p, k: _grads_for(name, p, k))


@pytest.mark.parametrize("name", NAMES)
def test_foreign_state_is_rejected_naming_the_state(name: str) -> None:
    entry = COMBINATORS[name]
    tx = _make(name)
    params = _params_for(name)
    with pytest.raises(ValueError, match=entry.state_type.__name__):
        tx.update(_grads_for(name, params), fdl.optim.EmptyState(), params)


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_gradients_name_the_leaf(name: str) -> None:
    tx = _make(name)
    params = _params_for(name)
    grads = _grads_for(name, params)
    del grads["2"]["bias"]
    with pytest.raises(ValueError, match=r"2\.bias"):
        tx.update(grads, tx.init(params), params)


# ---------------------------------------------------------------------------
# partition
# ---------------------------------------------------------------------------


def test_partition_groups_see_only_their_leaves() -> None:
    params, _ = _problem()
    tx = F.partition({"decay": F.adam(0.1), "no_decay": F.sgd(0.1, momentum=0.9)}, _labels)
    state = tx.init(params)
    assert set(state.inner_states["decay"][0].mu) == {"0.weight", "2.weight"}
    assert set(state.inner_states["no_decay"][0].trace) == {"0.bias", "2.bias"}


def test_partition_unknown_label_names_label_and_path() -> None:
    params, _ = _problem()
    labels = _labels(params)
    labels["2"]["bias"] = "typo"
    tx = F.partition({"decay": F.adam(), "no_decay": F.sgd()}, labels)
    with pytest.raises(ValueError, match=r"'typo'.*2\.bias.*'decay', 'no_decay'"):
        tx.init(params)


def test_partition_labels_not_matching_the_params() -> None:
    params, _ = _problem()
    tx = F.partition({"a": F.adam()}, {"0": "a", "1": "a"})
    with pytest.raises(ValueError, match=r"param_labels do not match the params.*\['0', '1'\]"):
        tx.init(params)


def test_partition_rejects_non_transformations() -> None:
    with pytest.raises(TypeError, match=r"transforms\['a'\] is a float"):
        F.partition({"a": 0.1}, {})


def test_partition_state_with_other_labels_is_rejected() -> None:
    params, _ = _problem()
    tx = F.partition({"decay": F.adam(), "no_decay": F.adam()}, _labels)
    other = F.partition(
        {"decay": F.adam(), "x": F.adam()}, lambda p: fdl.tree.map(lambda _: "x", p)
    )
    with pytest.raises(ValueError, match=r"holds labels \['decay', 'x'\]"):
        tx.update(_grads_for("partition", params), other.init(params), params)


# ---------------------------------------------------------------------------
# inject_hyperparams
# ---------------------------------------------------------------------------

PLAIN: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "adamw": (F.adamw, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
    "sgd": (F.sgd, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    "rmsprop": (F.rmsprop, {"lr": 0.01, "alpha": 0.9, "momentum": 0.5, "centered": True}),
    "adam": (F.adam, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
}


@pytest.mark.parametrize("name", list(PLAIN))
def test_inject_hyperparams_equals_the_plain_optimizer(name: str) -> None:
    factory, kwargs = PLAIN[name]
    ours = _fdl_run(F.inject_hyperparams(factory)(**kwargs), False, steps=20)
    plain = _fdl_run(factory(**kwargs), False, steps=20)
    for step, (a, b) in enumerate(zip(ours, plain, strict=True), start=1):
        assert_trees_close(a, b, rtol=1e-14, atol=1e-15, msg=f"{name} step {step}")


def test_inject_hyperparams_state_holds_tensors() -> None:
    opt = F.inject_hyperparams(F.adam)(lr=0.01, betas=(0.9, 0.99), amsgrad=True)
    state = opt.init(_problem()[0])
    h = state.hyperparams
    assert set(h) == {"lr", "betas"}  # the given numbers; bools and defaults stay static
    assert all(isinstance(x, torch.Tensor) and x.dtype == torch.float64 for x in fdl.tree.leaves(h))
    assert float(h["lr"]) == 0.01 and tuple(map(float, h["betas"])) == (0.9, 0.99)


def _torch_adam_with_lrs(lrs: list[float]) -> list[Any]:
    """torch.optim.Adam whose param_groups' lr is set before each step."""
    params, loss = _problem()
    lvs, treedef = fdl.tree.flatten(params)
    leaves = [x.detach().clone().requires_grad_(True) for x in lvs]
    opt = torch.optim.Adam(leaves, lr=lrs[0])
    out = []
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        loss(fdl.tree.unflatten(treedef, leaves)).backward()
        opt.step()
        out.append(fdl.tree.unflatten(treedef, [x.detach().clone() for x in leaves]))
    return out


def test_inject_hyperparams_lr_changed_in_the_state_does_not_recompile() -> None:
    """lr set in the state before every step: one graph, and torch's Adam with its
    param group's lr set the same way gives the same params."""
    lrs = [0.01 * (1 + (k % 4)) / (1 + k / 5) for k in range(20)]
    params, loss = _problem()
    opt = F.inject_hyperparams(F.adam)(lr=0.01)

    def set_lr(state: Any, k: int) -> Any:
        lr = torch.tensor(lrs[k], dtype=torch.float64)
        return state._replace(hyperparams={**state.hyperparams, "lr": lr})

    _check_compiles_once(opt, params, lambda p, k: torch.func.grad(loss)(p), between=set_lr)
    # the same run against torch, eagerly
    state, theirs = opt.init(params), _torch_adam_with_lrs(lrs)
    for k in range(20):
        updates, state = opt.update(torch.func.grad(loss)(params), set_lr(state, k), params)
        params = fdl.optim.apply_updates(params, updates)
        assert_trees_close(params, theirs[k], rtol=RTOL, atol=ATOL, msg=f"step {k + 1}")
        assert float(state.hyperparams["lr"]) == lrs[k]  # what the step used, for logging


def test_inject_hyperparams_schedule_is_evaluated_every_step() -> None:
    schedule = fdl.optim.schedules.ExponentialLR(0.1, 0.9)
    opt = F.inject_hyperparams(F.sgd)(lr=schedule, momentum=0.5)
    params, loss = _problem()
    state = opt.init(params)
    assert float(state.hyperparams["lr"]) == pytest.approx(0.1)
    plain = _fdl_run(F.sgd(schedule, momentum=0.5), False, steps=10)
    for k in range(10):
        updates, state = opt.update(torch.func.grad(loss)(params), state, params)
        params = fdl.optim.apply_updates(params, updates)
        # the value used at step k + 1 is the schedule at count k
        assert float(state.hyperparams["lr"]) == pytest.approx(0.1 * 0.9**k, rel=1e-14)
        assert_trees_close(params, plain[k], rtol=1e-14, atol=1e-15)
    # overriding a scheduled value has no effect: the schedule wins
    state = state._replace(hyperparams={**state.hyperparams, "lr": torch.tensor(5.0).double()})
    _, state = opt.update(torch.func.grad(loss)(params), state, params)
    assert float(state.hyperparams["lr"]) == pytest.approx(0.1 * 0.9**10, rel=1e-14)


def test_inject_hyperparams_errors() -> None:
    with pytest.raises(ValueError, match=r"static_args \['lrr'\] are not parameters of adam"):
        F.inject_hyperparams(F.adam, static_args="lrr")
    opt = F.inject_hyperparams(F.adam)(lr=0.01, eps=1e-8)
    params, _ = _problem()
    state = opt.init(params)
    bad = state._replace(hyperparams={k: v for k, v in state.hyperparams.items() if k != "eps"})
    with pytest.raises(ValueError, match=r"missing \['eps'\]"):
        opt.update(_grads_for("partition", params), bad, params)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        F.inject_hyperparams(F.adam)(lr=-1.0).init(params)


# ---------------------------------------------------------------------------
# lookahead, ema, incremental and periodic updates
# ---------------------------------------------------------------------------


def test_lookahead_slow_params_move_only_at_a_sync() -> None:
    params, loss = _problem()
    opt = F.lookahead(F.sgd(0.05), sync_period=3, slow_step_size=0.5)
    p = LookaheadParams.init_synced(params)
    state = opt.init(p)
    for k in range(1, 7):
        slow_before = p.slow
        updates, state = opt.update(torch.func.grad(loss)(p.fast), state, p)
        p = fdl.optim.apply_updates(p, updates)
        synced = k % 3 == 0
        assert fdl.tree.allclose(p.slow, slow_before, rtol=0, atol=0) != synced
        assert fdl.tree.allclose(p.fast, p.slow, rtol=0, atol=1e-15) == synced


def test_lookahead_errors() -> None:
    with pytest.raises(ValueError, match="sync_period must be an int >= 1; got 0"):
        F.lookahead(F.sgd(0.1), 0, 0.5)
    with pytest.raises(ValueError, match="Invalid slow_step_size value: 1.5"):
        F.lookahead(F.sgd(0.1), 2, 1.5)
    params, _ = _problem()
    opt = F.lookahead(F.sgd(0.1), 2, 0.5)
    with pytest.raises(ValueError, match=r"LookaheadParams\(fast, slow\); got dict"):
        opt.update(params, opt.init(params), params)


def test_ema_errors() -> None:
    with pytest.raises(
        ValueError, match=r"Invalid decay value: 1.0 \(expected a number in \[0, 1\)\)"
    ):
        F.ema(1.0)


@pytest.mark.parametrize("step_size", [0.1, 0.75])
def test_incremental_update_matches_optax(step_size: float) -> None:
    optax = _optax()
    new, _ = _problem()
    old = fdl.tree.map(lambda x: x * 0.5 - 1.0, new)
    ours = assert_pure(F.incremental_update, new, old, step_size)
    theirs = _to_torch(optax.incremental_update(_to_jax(new), _to_jax(old), step_size))
    assert_trees_close(ours, theirs, rtol=1e-15, atol=1e-15)


def test_periodic_update_matches_optax_and_compiles_once() -> None:
    optax = _optax()
    new, _ = _problem()
    old = fdl.tree.map(torch.zeros_like, new)
    backend = _CountingBackend()
    torch._dynamo.reset()
    compiled = torch.compile(F.periodic_update, backend=backend, fullgraph=True)
    for steps in range(7):
        theirs = _to_torch(optax.periodic_update(_to_jax(new), _to_jax(old), steps, 3))
        assert_trees_close(F.periodic_update(new, old, steps, 3), theirs, rtol=0, atol=0)
        got = compiled(new, old, torch.tensor(steps), 3)
        assert_trees_close(got, theirs, rtol=0, atol=0)
    assert backend.graphs == 1
    with pytest.raises(ValueError, match="update_period must be an int >= 1"):
        F.periodic_update(new, old, 0, 0)
    with pytest.raises(ValueError, match=r"2\.bias"):
        F.incremental_update(new, {"0": old["0"], "2": {"weight": old["2"]["weight"]}}, 0.1)


# ---------------------------------------------------------------------------
# MultiSteps
# ---------------------------------------------------------------------------


def test_multisteps_skip_not_finite_matches_optax() -> None:
    """NaN micro-steps are ignored as Optax ignores them (skip_state included)."""
    import jax

    optax = _optax()
    params, loss = _problem()
    ours = F.MultiSteps(F.adam(0.01), 2, should_skip_update_fn=F.skip_not_finite)
    theirs = optax.MultiSteps(
        optax.adam(0.01),
        2,
        should_skip_update_fn=optax.skip_not_finite,
        accumulator_dtype=_jnp().float64,
    )
    p, s = params, ours.init(params)
    jp, js = _to_jax(params), theirs.init(_to_jax(params))
    update = jax.jit(theirs.update)
    for k in range(12):
        grads = torch.func.grad(loss)(p)
        if k in (3, 4, 9):
            grads = {**grads, "0": {**grads["0"], "bias": grads["0"]["bias"] * float("nan")}}
        u, s = ours.update(grads, s, p)
        ju, js = update(_to_jax(grads), js, jp)
        p, jp = fdl.optim.apply_updates(p, u), optax.apply_updates(jp, ju)
        assert_trees_close(p, _to_torch(jp), rtol=RTOL, atol=ATOL, msg=f"step {k + 1}")
        assert int(s.gradient_step) == int(js.gradient_step)
        assert int(s.skip_state["num_not_finite"]) == int(js.skip_state["num_not_finite"])
        assert bool(ours.has_updated(s)) == bool(theirs.has_updated(js))


def test_multisteps_class_and_function_agree() -> None:
    ms = F.MultiSteps(F.sgd(0.1, momentum=0.9), 3)
    assert ms.inner_opt is not None
    a = _fdl_run(ms, False, steps=9)
    b = _fdl_run(ms.gradient_transformation(), False, steps=9)
    c = _fdl_run(F.multi_steps(F.sgd(0.1, momentum=0.9), 3), False, steps=9)
    for x, y, z in zip(a, b, c, strict=True):
        assert_trees_close(x, y, rtol=0, atol=0)
        assert_trees_close(x, z, rtol=0, atol=0)


def test_multisteps_errors() -> None:
    with pytest.raises(ValueError, match="every_k_schedule must be a positive int"):
        F.MultiSteps(F.sgd(0.1), 0)
    params, _ = _problem()
    ms = F.MultiSteps(F.sgd(0.1), 2, should_skip_update_fn=lambda u, s, p: (1.0, ()))
    with pytest.raises(ValueError, match="should_skip_update_fn must return a boolean scalar"):
        ms.update(_grads_for("partition", params), ms.init(params), params)


# ---------------------------------------------------------------------------
# everything at once, compiled by inductor
# ---------------------------------------------------------------------------


def test_composition_compiles_once_with_inductor() -> None:
    """lookahead(multi_steps(chain(clip, partition(inject_hyperparams(adamw), ema+sgd)))):
    one inductor graph over 20 steps, equal to eager."""
    tx = F.lookahead(
        F.multi_steps(
            F.chain(
                F.clip_by_global_norm(1.0),
                F.partition(
                    {
                        "decay": F.inject_hyperparams(F.adamw)(lr=0.01, weight_decay=0.1),
                        "no_decay": F.chain(F.ema(0.9), F.sgd(0.05)),
                    },
                    _labels,
                ),
            ),
            every_k_schedule=lambda s: torch.where(s < 2, 1, 2),
        ),
        sync_period=3,
        slow_step_size=0.5,
    )
    params, loss = _problem()
    _check_compiles_once(
        tx,
        LookaheadParams.init_synced(params),
        lambda p, k: torch.func.grad(loss)(p.fast),
        inner=os.environ.get("FDL_TEST_BACKEND", "inductor"),
    )
