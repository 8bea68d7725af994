"""The fdl MNIST CNN trains like its PyTorch reference on real MNIST batches.

Both models start from the same weights (the torch model's ``state_dict``
loaded with ``fdl.nn.load_state_dict``), see the same first 50 training
batches of 64 (unshuffled, so only 3200 images are used) and minimise the same
loss, ``nll_loss`` of the log-probabilities: torch with ``torch.optim.Adam``
and ``loss.backward()``, fdl with ``fdl.optim.adam`` in a pure train step.

Step by step (teacher forcing): before each torch step, fdl's eager and
compiled steps run from torch's current params and Adam state; their losses
and updated params must equal torch's. Over the whole run: an fdl trajectory
that never sees torch's params must end at torch's final params.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import fdl

STEPS, BATCH, LR = 50, 64, 1e-3
# Per-step losses from the same params and optimizer state, absolute.
LOSS_TOL = {"eager": 1e-5, "compiled": 1e-4}
# Params after one step from the same params and state, per tensor
# ||fdl - torch|| / ||torch|| (measured: 2.5e-7 eager, 7.2e-6 compiled).
STEP_REL_NORM = {"eager": 5e-6, "compiled": 5e-5}
# Free-running 50-step trajectories drift apart: Adam divides by sqrt(v), so a
# weight whose gradient is ~0 takes a rounding-driven step of up to ~lr, and the
# ~1e-6 relative gradient differences (fdl writes log_softmax and nll_loss out)
# grow. Measured after 50 steps: losses up to 3e-4 apart (torch.compile of the
# torch module itself drifts up to 9e-4 from torch eager), params 1.1e-4 apart
# in relative norm per tensor, while single weights can differ by more than one
# Adam step (up to 1.2e-3 seen), so params are bounded in norm only.
# Bounds: losses 1e-3 apart, params 1e-3 relative norm per tensor.
TRAJ_LOSS_TOL, TRAJ_REL_NORM = 1e-3, 1e-3
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    if not os.environ.get("FDL_DATA_DIR") and not SHARED_DATA.exists():
        pytest.skip(
            "NO MNIST: FDL_DATA_DIR is unset and ../shared/data does not exist; "
            "set FDL_DATA_DIR to a folder holding MNIST/raw to run the parity test"
        )
    # a missing or broken data folder fails here with fdl.data's error naming the files
    x, y = fdl.data.mnist(train=True)
    x = fdl.data.normalize(x[: STEPS * BATCH], 0.5, 0.5)
    y = y[: STEPS * BATCH]
    return list(fdl.data.batches(x, y, batch_size=BATCH))


@pytest.fixture(scope="module")
def models() -> tuple[ModuleType, ModuleType]:
    return _load_example("mnist_cnn_torch"), _load_example("mnist_cnn")


def _rel_norm_gap(a: dict, b: dict) -> dict[str, float]:
    """Per key ``||a - b|| / ||b||`` of two flat state dicts."""
    return {k: float((a[k] - b[k]).norm() / b[k].norm()) for k in b}


def _fdl_state_from_torch(net, torch_opt, opt, model):
    """fdl params and Adam state holding the torch model's params and Adam moments."""
    names = [name for name, _ in net.named_parameters()]
    params = fdl.nn.load_state_dict(
        {k: v.detach().clone() for k, v in net.state_dict().items()}, model
    )
    adam, rest = opt.init(params)
    torch_states = [torch_opt.state[p] for p in net.parameters()]
    if not torch_states[0]:  # before the first step
        return params, (adam, rest)
    mu = {n: s["exp_avg"].clone() for n, s in zip(names, torch_states, strict=True)}
    nu = {n: s["exp_avg_sq"].clone() for n, s in zip(names, torch_states, strict=True)}
    count = torch.tensor(int(torch_states[0]["step"]), dtype=adam.count.dtype)
    adam = adam._replace(
        count=count,
        mu=fdl.nn.load_state_dict(mu, model),
        nu=fdl.nn.load_state_dict(nu, model),
    )
    return params, (adam, rest)


@pytest.fixture(scope="module")
def runs(batches, models) -> dict:
    """The torch loop, fdl steps from torch's state at every step, and a free fdl run."""
    torch_example, fdl_example = models
    torch.manual_seed(0)
    net = torch_example.CNN()
    init = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch_opt = torch.optim.Adam(net.parameters(), lr=LR)

    model = fdl_example.CNN()
    opt = fdl.optim.adam(lr=LR)

    def loss_fn(p, x, y):
        return fdl.losses.nll_loss(model.apply(p, x), y)

    steps = {
        "eager": fdl.train.make_train_step(loss_fn, opt, compile=False),
        "compiled": fdl.train.make_train_step(loss_fn, opt),
    }
    free_params = fdl.nn.load_state_dict(init, model)
    free_state = opt.init(free_params)
    out: dict = {"torch": [], "free": [], "init": init}
    out.update({mode: {"losses": [], "gaps": []} for mode in steps})
    for x, y in batches:
        params, state = _fdl_state_from_torch(net, torch_opt, opt, model)
        stepped = {mode: step(params, state, x, y) for mode, step in steps.items()}
        torch_opt.zero_grad()
        loss = torch.nn.functional.nll_loss(net(x), y)
        loss.backward()
        torch_opt.step()
        out["torch"].append(loss.item())
        after = {k: v.detach() for k, v in net.state_dict().items()}
        for mode, (new_params, _, new_loss) in stepped.items():
            out[mode]["losses"].append(float(new_loss))
            out[mode]["gaps"].append(_rel_norm_gap(fdl.nn.state_dict(new_params), after))
        free_params, free_state, free_loss = steps["eager"](free_params, free_state, x, y)
        out["free"].append(float(free_loss))
    out["final"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
    out["free_final"] = fdl.nn.state_dict(free_params)
    return out


def test_same_initial_weights(models, runs) -> None:
    _, fdl_example = models
    params = fdl.nn.load_state_dict(runs["init"], fdl_example.CNN())
    flat = fdl.nn.state_dict(params)
    assert set(flat) == set(runs["init"])
    for k, v in flat.items():
        assert torch.equal(v, runs["init"][k])


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_per_step_losses_equal(runs, mode: str) -> None:
    got, ref = torch.tensor(runs[mode]["losses"]), torch.tensor(runs["torch"])
    assert len(got) == STEPS
    torch.testing.assert_close(got, ref, rtol=0, atol=LOSS_TOL[mode])
    assert ref[-1] < 0.5 * ref[0]  # it did learn


@pytest.mark.parametrize("mode", ["eager", "compiled"])
def test_per_step_updates_equal(runs, mode: str) -> None:
    for i, gaps in enumerate(runs[mode]["gaps"]):
        name = max(gaps, key=gaps.get)
        assert gaps[name] <= STEP_REL_NORM[mode], (
            f"step {i}: {name} relative norm gap {gaps[name]:.2e}"
        )


def test_free_running_trajectory(runs) -> None:
    torch.testing.assert_close(
        torch.tensor(runs["free"]), torch.tensor(runs["torch"]), rtol=0, atol=TRAJ_LOSS_TOL
    )
    final, ref = runs["free_final"], runs["final"]
    assert set(final) == set(ref)
    gaps = _rel_norm_gap(final, ref)
    for name in ref:
        assert gaps[name] <= TRAJ_REL_NORM, f"{name}: relative norm gap {gaps[name]:.2e}"


def test_reference_loss_is_nll_of_log_softmax(batches, models, runs) -> None:
    # the reference program feeds log_softmax outputs to CrossEntropyLoss: log_softmax is
    # idempotent on log-probabilities, so that equals nll_loss up to rounding
    torch_example, _ = models
    net = torch_example.CNN()
    net.load_state_dict(runs["init"])
    x, y = batches[0]
    log_p = net(x)
    torch.testing.assert_close(
        torch.nn.CrossEntropyLoss()(log_p, y),
        torch.nn.functional.nll_loss(log_p, y),
        rtol=0,
        atol=1e-6,
    )
