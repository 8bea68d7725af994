"""Bad input to the optimizers: every error names the leaf path or the state, and nothing changes.

One registry of optimizers (including wrappers and a nested chain) and one of
stateful blocks; every check is parametrised over them.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch

import fdl
from fdl.optim import schedules as S

GT = fdl.optim.GradientTransformation

# name -> factory of the optimizer (every public optimizer, a wrapper, a nested chain)
OPTIMIZERS: dict[str, Callable[[], GT]] = {
    "sgd": lambda: fdl.optim.sgd(0.1),
    "sgd-momentum": lambda: fdl.optim.sgd(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: fdl.optim.adam(0.1),
    "adamw-amsgrad": lambda: fdl.optim.adamw(0.1, amsgrad=True),
    "rmsprop": lambda: fdl.optim.rmsprop(0.01),
    "rmsprop-centered": lambda: fdl.optim.rmsprop(0.01, momentum=0.5, centered=True),
    "adagrad": lambda: fdl.optim.adagrad(0.1),
    "adamax": lambda: fdl.optim.adamax(0.1),
    "nadam": lambda: fdl.optim.nadam(0.1),
    "radam": lambda: fdl.optim.radam(0.1),
    "adadelta": lambda: fdl.optim.adadelta(1.0),
    "adam-schedule": lambda: fdl.optim.adam(S.ExponentialLR(0.1, 0.9)),
    "clip-then-adam": lambda: fdl.optim.chain(fdl.optim.clip_by_global_norm(1.0), fdl.optim.adam()),
    "rprop": lambda: fdl.optim.rprop(0.1, maximize=True),
    "asgd": lambda: fdl.optim.asgd(0.1, t0=1.0, weight_decay=0.1),
    "adafactor": lambda: fdl.optim.adafactor(0.1, weight_decay=0.1),
    "sparse_adam": lambda: fdl.optim.sparse_adam(0.1, maximize=True),
    # Muon takes matrices only: as with torch, the others go to AdamW
    "muon-with-adamw": lambda: fdl.optim.chain(
        fdl.optim.masked(fdl.optim.muon(0.02), lambda p: fdl.tree.map(lambda x: x.ndim == 2, p)),
        fdl.optim.masked(fdl.optim.adamw(0.1), lambda p: fdl.tree.map(lambda x: x.ndim != 2, p)),
    ),
}
NAMES = list(OPTIMIZERS)

# stateful blocks, each with its state class
BLOCKS: dict[str, tuple[Callable[[], GT], type]] = {
    "scale_by_adam": (fdl.optim.scale_by_adam, fdl.optim.ScaleByAdamState),
    "scale_by_adamax": (fdl.optim.scale_by_adamax, fdl.optim.ScaleByAdamaxState),
    "scale_by_nadam": (fdl.optim.scale_by_nadam, fdl.optim.ScaleByNadamState),
    "scale_by_radam": (fdl.optim.scale_by_radam, fdl.optim.ScaleByAdamState),
    "scale_by_rms": (fdl.optim.scale_by_rms, fdl.optim.ScaleByRmsState),
    "scale_by_rss": (fdl.optim.scale_by_rss, fdl.optim.ScaleByRssState),
    "scale_by_adadelta": (fdl.optim.scale_by_adadelta, fdl.optim.ScaleByAdadeltaState),
    "trace": (lambda: fdl.optim.trace(0.9), fdl.optim.TraceState),
    "scale_by_schedule": (
        lambda: fdl.optim.scale_by_schedule(S.ExponentialLR(0.1, 0.9)),
        fdl.optim.ScaleByScheduleState,
    ),
    "masked": (
        lambda: fdl.optim.masked(fdl.optim.scale_by_rms(), lambda p: fdl.tree.map(bool, p)),
        fdl.optim.MaskedState,
    ),
    "multi_steps": (
        lambda: fdl.optim.multi_steps(fdl.optim.sgd(0.1), 2),
        fdl.optim.MultiStepsState,
    ),
    "apply_if_finite": (
        lambda: fdl.optim.apply_if_finite(fdl.optim.sgd(0.1)),
        fdl.optim.ApplyIfFiniteState,
    ),
    "scale_by_rprop": (fdl.optim.scale_by_rprop, fdl.optim.ScaleByRpropState),
    "average_params": (
        lambda: fdl.optim.average_params(fdl.optim.asgd_mu(1.0)),
        fdl.optim.AverageParamsState,
    ),
    "scale_by_factored_rms": (fdl.optim.scale_by_factored_rms, fdl.optim.ScaleByFactoredRmsState),
    "scale_by_relative_step": (
        fdl.optim.scale_by_relative_step,
        fdl.optim.ScaleByRelativeStepState,
    ),
    "ema_trace": (fdl.optim.ema_trace, fdl.optim.EmaTraceState),
    "scale_by_sparse_adam": (fdl.optim.scale_by_sparse_adam, fdl.optim.ScaleBySparseAdamState),
}


def _params() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "fc1": {"weight": torch.randn(4, 3, generator=g), "bias": torch.randn(4, generator=g)},
        "fc2": {"weight": torch.randn(2, 4, generator=g), "bias": torch.randn(2, generator=g)},
    }


def _grads(params: Any) -> Any:
    return fdl.tree.map(lambda p: torch.full_like(p, 0.5), params)


def _parts(state: Any) -> list[str]:
    """The class names of a chain state's parts (what a message must name)."""
    return [type(s).__name__ for s in state] if type(state) is tuple else [type(state).__name__]


# the optimizers that keep something per leaf (plain sgd keeps only a step count)
PER_LEAF = [
    n for n in NAMES if any(x.ndim > 0 for x in fdl.tree.leaves(OPTIMIZERS[n]().init(_params())))
]

# pairs (optimizer, the optimizer whose state it is given) whose states differ
FOREIGN = [
    pytest.param(a, b, id=f"{a}<-{b}")
    for a, b in itertools.permutations(NAMES, 2)
    if fdl.tree.structure(OPTIMIZERS[a]().init(_params()))
    != fdl.tree.structure(OPTIMIZERS[b]().init(_params()))
]


# ---------------------------------------------------------------------------
# tree mismatches name the full dotted path of every differing leaf
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_missing_gradient_names_every_leaf_path(name: str) -> None:
    opt = OPTIMIZERS[name]()
    params = _params()
    grads = _grads(params)
    del grads["fc2"]
    with pytest.raises(ValueError) as err:
        opt.update(grads, opt.init(params), params)
    msg = str(err.value)
    assert "'fc2.bias' is missing from the gradients" in msg, msg
    assert "'fc2.weight' is missing from the gradients" in msg, msg


@pytest.mark.parametrize("name", NAMES)
def test_gradient_of_wrong_shape_names_its_path(name: str) -> None:
    opt = OPTIMIZERS[name]()
    params = _params()
    grads = _grads(params)
    grads["fc1"]["weight"] = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"'fc1\.weight' has shape \(3, 4\) in the gradients"):
        opt.update(grads, opt.init(params), params)


@pytest.mark.parametrize("name", PER_LEAF)
def test_state_for_other_params_names_every_leaf_path(name: str) -> None:
    opt = OPTIMIZERS[name]()
    params = _params()
    other = dict(params, fc3={"bias": torch.zeros(2)})
    with pytest.raises(ValueError) as err:
        opt.update(_grads(params), opt.init(other), params)
    msg = str(err.value)
    assert re.search(r"'\d+\.(\w+\.)*fc3\.bias' is in the state but not in", msg), msg


@pytest.mark.parametrize("name", PER_LEAF)
def test_state_for_other_shapes_names_its_path(name: str) -> None:
    opt = OPTIMIZERS[name]()
    params = _params()
    other = fdl.tree.map(lambda p: torch.zeros(p.shape[0] + 1, *p.shape[1:]), params)
    with pytest.raises(ValueError, match=r"'\d+\.(\w+\.)*fc1\.bias' has shape \(5,\) in the state"):
        opt.update(_grads(params), opt.init(other), params)


def test_apply_updates_names_every_leaf_path() -> None:
    params = _params()
    updates = _grads(params)
    del updates["fc2"]["bias"]
    with pytest.raises(ValueError, match=r"apply_updates: 'fc2\.bias' is missing from the updates"):
        fdl.optim.apply_updates(params, updates)
    updates = _grads(params)
    updates["fc2"]["bias"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"'fc2\.bias' has shape \(1,\) in the updates"):
        fdl.optim.apply_updates(params, updates)


def test_block_on_its_own_names_the_path() -> None:
    tx = fdl.optim.scale_by_adam()
    params = _params()
    grads = _grads(params)
    with pytest.raises(ValueError, match=r"scale_by_adam: 'fc2\.bias' is missing from the updates"):
        tx.update(
            {"fc1": grads["fc1"], "fc2": {"weight": grads["fc2"]["weight"]}},
            tx.init(params),
            params,
        )


def test_nested_chain_is_checked_once_at_the_top(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outermost update checks gradients and state; nested chains and blocks do not."""
    from fdl.optim import _validation

    calls: list[str] = []
    real = _validation.check_tree

    def counting(*args: Any, **kw: Any) -> None:
        calls.append(kw["context"])
        real(*args, **kw)

    monkeypatch.setattr(_validation, "check_tree", counting)
    opt = fdl.optim.chain(
        fdl.optim.clip_by_global_norm(1.0), fdl.optim.adam(), fdl.optim.scale(1.0)
    )
    params = _params()
    opt.update(_grads(params), opt.init(params), params)
    assert len(calls) == 2 and all(c.startswith("chain.update") for c in calls), calls


# ---------------------------------------------------------------------------
# a state made by another optimizer
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "other"), FOREIGN)
def test_foreign_state_names_expected_and_given_state(name: str, other: str) -> None:
    opt, foreign = OPTIMIZERS[name](), OPTIMIZERS[other]()
    params = _params()
    state = foreign.init(params)
    with pytest.raises(ValueError) as err:
        opt.update(_grads(params), state, params)
    msg = str(err.value)
    for part in _parts(opt.init(params)) + _parts(state):
        assert part in msg, (part, msg)


def test_rmsprop_rejects_adam_state() -> None:
    params = _params()
    with pytest.raises(
        ValueError, match="ScaleByAdamState.*ScaleByRmsState|ScaleByRmsState.*ScaleByAdamState"
    ):
        fdl.optim.rmsprop().update(_grads(params), fdl.optim.adam().init(params), params)


def test_sgd_rejects_adam_state_with_a_value_error() -> None:
    params = _params()
    with pytest.raises(ValueError, match=r"sgd\.update: .*ScaleByAdamState"):
        fdl.optim.sgd(0.1, momentum=0.9).update(
            _grads(params), fdl.optim.adam().init(params), params
        )


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_rejects_foreign_state(name: str) -> None:
    factory, cls = BLOCKS[name]
    params = _params()
    foreign = (
        fdl.optim.scale_by_rms() if cls is fdl.optim.TraceState else fdl.optim.trace(0.9)
    ).init(params)
    with pytest.raises(ValueError) as err:
        factory().update(_grads(params), foreign, params)
    msg = str(err.value)
    assert cls.__name__ in msg and type(foreign).__name__ in msg, msg


@pytest.mark.parametrize("name", NAMES)
def test_failed_update_changes_nothing(name: str) -> None:
    opt = OPTIMIZERS[name]()
    params = _params()
    state = opt.init(params)
    grads = _grads(params)
    del grads["fc1"]
    kept = [x.clone() for x in fdl.tree.leaves((params, state, grads))]
    with pytest.raises(ValueError):
        opt.update(grads, state, params)
    for a, b in zip(fdl.tree.leaves((params, state, grads)), kept, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# hyperparameters: one message style
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "what"),
    [
        ("sgd", {"lr": -0.1}, "learning rate"),
        ("sgd", {"momentum": -0.5}, "momentum"),
        ("sgd", {"weight_decay": -0.1}, "weight_decay"),
        ("adam", {"betas": (1.0, 0.999)}, "beta1"),
        ("adamw", {"betas": (0.9, -0.1)}, "beta2"),
        ("adam", {"eps": -1.0}, "epsilon"),
        ("rmsprop", {"alpha": -0.1}, "alpha"),
        ("rmsprop", {"momentum": -0.1}, "momentum"),
        ("adagrad", {"lr_decay": -0.1}, "lr_decay"),
        ("adagrad", {"initial_accumulator_value": -1.0}, "initial_accumulator_value"),
        ("nadam", {"momentum_decay": -1.0}, "momentum_decay"),
        ("radam", {"eps": -1e-8}, "epsilon"),
        ("adamax", {"weight_decay": -0.1}, "weight_decay"),
        ("adadelta", {"rho": 1.5}, "rho"),
    ],
)
def test_invalid_hyperparameter_message_names_it(name: str, kwargs: dict, what: str) -> None:
    with pytest.raises(ValueError, match=rf"^Invalid {what}( value)?: "):
        getattr(fdl.optim, name)(**kwargs)


# (fdl optimizer, torch optimizer, bad kwargs, params): fdl's message starts with torch's
TORCH_MESSAGES = {
    "rprop-lr": (fdl.optim.rprop, torch.optim.Rprop, {"lr": -0.1}),
    "rprop-eta-minus": (fdl.optim.rprop, torch.optim.Rprop, {"etas": (1.5, 1.2)}),
    "rprop-eta-plus": (fdl.optim.rprop, torch.optim.Rprop, {"etas": (0.5, 0.9)}),
    "asgd-lr": (fdl.optim.asgd, torch.optim.ASGD, {"lr": -0.1}),
    "asgd-weight_decay": (fdl.optim.asgd, torch.optim.ASGD, {"weight_decay": -0.1}),
    "adafactor-lr": (fdl.optim.adafactor, torch.optim.Adafactor, {"lr": -0.1}),
    "adafactor-beta2_decay": (fdl.optim.adafactor, torch.optim.Adafactor, {"beta2_decay": 0.1}),
    "adafactor-eps1": (fdl.optim.adafactor, torch.optim.Adafactor, {"eps": (-1.0, 1e-3)}),
    "adafactor-eps2": (fdl.optim.adafactor, torch.optim.Adafactor, {"eps": (None, -1e-3)}),
    "adafactor-d": (fdl.optim.adafactor, torch.optim.Adafactor, {"d": 0.5}),
    "adafactor-weight_decay": (fdl.optim.adafactor, torch.optim.Adafactor, {"weight_decay": -1}),
    "sparse_adam-lr": (fdl.optim.sparse_adam, torch.optim.SparseAdam, {"lr": 0.0}),
    "sparse_adam-eps": (fdl.optim.sparse_adam, torch.optim.SparseAdam, {"eps": 0.0}),
    "sparse_adam-beta1": (fdl.optim.sparse_adam, torch.optim.SparseAdam, {"betas": (1.0, 0.9)}),
    "sparse_adam-beta2": (fdl.optim.sparse_adam, torch.optim.SparseAdam, {"betas": (0.9, -0.1)}),
    "muon-lr": (fdl.optim.muon, torch.optim.Muon, {"lr": -0.1}),
    "muon-momentum": (fdl.optim.muon, torch.optim.Muon, {"momentum": -0.1}),
    "muon-weight_decay": (fdl.optim.muon, torch.optim.Muon, {"weight_decay": -0.1}),
    "muon-adjust_lr_fn": (fdl.optim.muon, torch.optim.Muon, {"adjust_lr_fn": "rms"}),
    "muon-tensor-lr": (fdl.optim.muon, torch.optim.Muon, {"lr": torch.tensor([0.1, 0.2])}),
}


def _torch_message(fn: Callable[[], Any]) -> str:
    with pytest.raises(ValueError) as err:
        fn()
    return str(err.value)


@pytest.mark.parametrize("case", list(TORCH_MESSAGES))
def test_hyperparameter_message_is_torchs(case: str) -> None:
    """The message of a bad hyperparameter starts with the one torch.optim raises for it."""
    fdl_fn, torch_cls, kwargs = TORCH_MESSAGES[case]
    expected = _torch_message(lambda: torch_cls([torch.zeros(2, 2, requires_grad=True)], **kwargs))
    got = _torch_message(lambda: fdl_fn(**kwargs))
    assert got.startswith(expected), (got, expected)


# Muon's errors at its first step, torch's: (fdl call, torch call) on the same bad input
def _muon_step(opt: Any, p: Any) -> None:
    opt.update(fdl.tree.map(torch.ones_like, p), opt.init(p), p)


def _torch_muon_step(p: torch.Tensor, **kwargs: Any) -> None:
    q = torch.nn.Parameter(p.clone())
    opt = torch.optim.Muon([q], **kwargs)
    q.grad = torch.ones_like(q)
    opt.step()


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({}, (4,)),
        ({}, (2, 3, 4)),
        ({"ns_steps": 100}, (3, 3)),
        ({"ns_coefficients": (1.0, 2.0)}, (3, 3)),
    ],
)
def test_muon_errors_are_torchs(kwargs: dict, shape: tuple[int, ...]) -> None:
    """Non-matrix params (at ``init``; torch: at construction) and bad Newton-Schulz settings."""
    p = torch.zeros(shape)
    expected = _torch_message(lambda: _torch_muon_step(p, **kwargs))
    got = _torch_message(lambda: _muon_step(fdl.optim.muon(**kwargs), {"fc": {"w": p}}))
    assert got.startswith(expected), (got, expected)
    if len(shape) != 2:
        assert "'fc.w'" in got, got  # the offending leaf's path
