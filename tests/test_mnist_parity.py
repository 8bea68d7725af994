"""The fdl MNIST CNN trains exactly like its PyTorch reference on real MNIST batches.

Both models start from the same weights (the torch model's ``state_dict``
loaded with ``fdl.nn.load_state_dict``), see the same first 50 training
batches of 64 (unshuffled, so only 3200 images are used) and minimise the same
loss, ``nll_loss`` of the log-probabilities: torch with ``torch.optim.Adam``
and ``loss.backward()``, fdl with ``fdl.optim.adam`` in a pure train step.
The eager fdl trajectory is compared with torch's step by step; at every step
the compiled fdl step also runs from the same params and state and must give
the same loss and update.
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
# Per-step losses, absolute. Eager: fdl and torch follow one 50-step trajectory.
# Compiled: each compiled step is fed the eager trajectory's params and state
# (teacher forcing) and must give the same loss and update; free-running, a
# compiled trajectory drifts from any eager one as Adam amplifies rounding
# differences (torch.compile of the torch module drifts ~1e-3 from torch eager
# over these 50 steps), so trajectories are compared eagerly.
LOSS_TOL = {"eager": 1e-5, "compiled": 1e-4}
# Final params after 50 steps, eager: elementwise within half an Adam step (an
# Adam step moves a weight by about lr, and weights whose gradient is ~0 take
# rounding-driven steps) and per tensor ||fdl - torch|| / ||torch|| <= 1e-3
# (measured: up to 1.1e-4 elementwise and 1.1e-4 relative norm, conv2.weight).
PARAM_ATOL, PARAM_REL_NORM = 0.5 * LR, 1e-3
# One compiled step against one eager step from the same params and state:
# per tensor ||compiled - eager|| / ||eager|| (measured: up to 7e-6).
COMPILED_UPDATE_REL_NORM = 5e-5
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


@pytest.fixture(scope="module")
def reference(batches, models) -> dict:
    """The torch loop: nn.Module, torch.optim.Adam, nll_loss on log_softmax."""
    torch_example, _ = models
    torch.manual_seed(0)
    net = torch_example.CNN()
    init = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return {"init": init, "losses": torch.tensor(losses), "final": final}


@pytest.fixture(scope="module")
def fdl_run(batches, models, reference) -> dict:
    """The eager fdl trajectory; at every step the compiled step runs on the same inputs."""
    _, fdl_example = models
    model = fdl_example.CNN()
    params = fdl.nn.load_state_dict(reference["init"], model)
    opt = fdl.optim.adam(lr=LR)

    def loss_fn(p, x, y):
        return fdl.losses.nll_loss(model.apply(p, x), y)

    eager = fdl.train.make_train_step(loss_fn, opt, compile=False)
    compiled = fdl.train.make_train_step(loss_fn, opt)
    state = opt.init(params)
    losses, compiled_losses, update_gaps = [], [], []
    for x, y in batches:
        c_params, _, c_loss = compiled(params, state, x, y)
        params, state, loss = eager(params, state, x, y)
        losses.append(float(loss))
        compiled_losses.append(float(c_loss))
        update_gaps.append(_rel_norm_gap(c_params, params))
    return {
        "losses": torch.tensor(losses),
        "compiled_losses": torch.tensor(compiled_losses),
        "update_gaps": update_gaps,
        "final": fdl.nn.state_dict(params),
    }


def _rel_norm_gap(a, b) -> dict[str, float]:
    """Per parameter ``||a - b|| / ||b||``."""
    fa, fb = fdl.nn.state_dict(a), fdl.nn.state_dict(b)
    return {k: float((fa[k] - fb[k]).norm() / fb[k].norm()) for k in fb}


def test_same_initial_weights(models, reference) -> None:
    _, fdl_example = models
    params = fdl.nn.load_state_dict(reference["init"], fdl_example.CNN())
    assert set(fdl.nn.state_dict(params)) == set(reference["init"])
    for k, v in fdl.nn.state_dict(params).items():
        assert torch.equal(v, reference["init"][k])


def test_eager_per_step_losses_equal(fdl_run, reference) -> None:
    assert len(fdl_run["losses"]) == STEPS
    torch.testing.assert_close(
        fdl_run["losses"], reference["losses"], rtol=0, atol=LOSS_TOL["eager"]
    )
    assert reference["losses"][-1] < 0.5 * reference["losses"][0]  # it did learn


def test_eager_final_params_equal(fdl_run, reference) -> None:
    assert set(fdl_run["final"]) == set(reference["final"])
    gaps = _rel_norm_gap(fdl_run["final"], reference["final"])
    for name, ref in reference["final"].items():
        torch.testing.assert_close(
            fdl_run["final"][name], ref, rtol=0, atol=PARAM_ATOL, msg=lambda m, n=name: f"{n}: {m}"
        )
        assert gaps[name] <= PARAM_REL_NORM, f"{name}: relative norm gap {gaps[name]:.2e}"


def test_compiled_per_step_losses_equal(fdl_run, reference) -> None:
    # the compiled step's loss against the torch reference's, step by step
    torch.testing.assert_close(
        fdl_run["compiled_losses"], reference["losses"], rtol=0, atol=LOSS_TOL["compiled"]
    )
    torch.testing.assert_close(
        fdl_run["compiled_losses"], fdl_run["losses"], rtol=0, atol=LOSS_TOL["eager"]
    )


def test_compiled_updates_equal(fdl_run) -> None:
    # the params after each compiled step equal the eager step's from the same inputs
    worst = max(max(g.values()) for g in fdl_run["update_gaps"])
    assert worst <= COMPILED_UPDATE_REL_NORM, f"relative norm gap {worst:.2e}"


def test_reference_loss_is_nll_of_log_softmax(batches, models, reference) -> None:
    # the reference program feeds log_softmax outputs to CrossEntropyLoss: log_softmax is
    # idempotent on log-probabilities, so that equals nll_loss up to rounding
    torch_example, _ = models
    net = torch_example.CNN()
    net.load_state_dict(reference["init"])
    x, y = batches[0]
    log_p = net(x)
    torch.testing.assert_close(
        torch.nn.CrossEntropyLoss()(log_p, y),
        torch.nn.functional.nll_loss(log_p, y),
        rtol=0,
        atol=1e-6,
    )
