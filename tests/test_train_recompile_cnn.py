"""The MNIST CNN's compiled steps never recompile: every batch of every epoch, the partial last
batch included, runs the graph compiled for the first one (``fdl.train.fit`` pads and masks it).

The backend is ``aot_eager`` (dynamo and AOT autograd as with inductor; recompiles are decided by
dynamo's guards, before any backend runs), so the test takes seconds, not a cold compile.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch._dynamo.testing as dynamo_testing

import fdl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _cnn() -> fdl.nn.Layer:
    spec = importlib.util.spec_from_file_location("_recompile_mnist_cnn", EXAMPLES / "mnist_cnn.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CNN()


def _data(key: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    kx, ky = fdl.random.split(key)
    return fdl.random.normal(kx, (n, 1, 28, 28)), fdl.random.randint(ky, (n,), 0, 10)


def test_cnn_fit_compiles_once_over_epochs_with_partial_last_batches() -> None:
    model = _cnn()
    k_init, k_train, k_val, k_fit = fdl.random.split(fdl.random.key(0), 4)
    train = _data(k_train, 70)  # batch 32: 32, 32, then a partial 6
    val = _data(k_val, 13)  # eval batch 8: 8, then a partial 5
    counter = dynamo_testing.CompileCounterWithBackend("aot_eager")
    steps = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        res = fdl.train.fit(
            model.apply,
            fdl.losses.nll_loss,
            fdl.optim.adam(lr=1e-3),
            model.init(k_init),
            train,
            key=k_fit,
            epochs=2,
            batch_size=32,
            val_data=val,
            eval_batch_size=8,
            compile={"backend": counter},
            progress=False,
            callback=steps.append,
        )
    assert counter.frame_count == 2  # one train step graph, one eval step graph
    assert [r["epoch"] for r in res.history] == [1, 2] and len(steps) == 2
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in res.history)
