"""The fdl MNIST CNN trains exactly like its PyTorch reference on real MNIST batches.

Both models start from the same weights (the torch model's ``state_dict``
loaded with ``fdl.nn.load_state_dict``), see the same first 50 training
batches of 64 (unshuffled, so only 3200 images are used) and minimise the same
loss, ``nll_loss`` of the log-probabilities: torch with ``torch.optim.Adam``
and ``loss.backward()``, fdl with ``fdl.optim.adam`` in a pure train step,
eagerly and compiled with ``torch.compile``.
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
LOSS_TOL = {"eager": 1e-5, "compiled": 1e-4}  # per-step loss, absolute
PARAM_TOL = {"eager": 1e-5, "compiled": 1e-4}  # final params, absolute (rtol 1e-4)
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


def _fdl_run(batches, models, reference, compile: bool) -> dict:
    _, fdl_example = models
    model = fdl_example.CNN()
    params = fdl.nn.load_state_dict(reference["init"], model)
    opt = fdl.optim.adam(lr=LR)

    def loss_fn(p, x, y):
        return fdl.losses.nll_loss(model.apply(p, x), y)

    step = fdl.train.make_train_step(loss_fn, opt, compile=compile)
    state = opt.init(params)
    losses = []
    for x, y in batches:
        params, state, loss = step(params, state, x, y)
        losses.append(float(loss))
    return {"losses": torch.tensor(losses), "final": fdl.nn.state_dict(params)}


@pytest.fixture(scope="module", params=["eager", "compiled"])
def run(request, batches, models, reference) -> tuple[str, dict]:
    return request.param, _fdl_run(batches, models, reference, request.param == "compiled")


def test_same_initial_weights(models, reference) -> None:
    _, fdl_example = models
    params = fdl.nn.load_state_dict(reference["init"], fdl_example.CNN())
    assert set(fdl.nn.state_dict(params)) == set(reference["init"])


def test_per_step_losses_equal(run, reference) -> None:
    mode, got = run
    assert len(got["losses"]) == STEPS
    torch.testing.assert_close(got["losses"], reference["losses"], rtol=0, atol=LOSS_TOL[mode])
    assert reference["losses"][-1] < 0.5 * reference["losses"][0]  # it did learn


def test_final_params_equal(run, reference) -> None:
    mode, got = run
    assert set(got["final"]) == set(reference["final"])
    for name, ref in reference["final"].items():
        torch.testing.assert_close(
            got["final"][name],
            ref,
            rtol=1e-4,
            atol=PARAM_TOL[mode],
            msg=lambda m, n=name: f"{n}: {m}",
        )


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
