"""The steps' ``memory_format="channels_last"`` switch: the default step's params, one compile.

A small CNN (conv, group norm, relu, 2x2 max-pool, flatten, linear) trained a
few steps with the default layout and with channels-last must end at the same
params (float64 to 1e-10, float32 to 1e-5: the same kernels, only the order of
some sums differs), returned with torch's shapes and strides; the compiled
channels-last step compiles once over all its steps.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import fdl
import fdl.train
from fdl.testing import assert_trees_close

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
STEPS = 3
CL = torch.channels_last


def _model(dtype: torch.dtype) -> Any:
    return fdl.nn.Sequential(
        fdl.nn.Conv2d(1, 4, 3, padding=1, dtype=dtype),  # one input channel, like MNIST
        fdl.nn.GroupNorm(2, 4, dtype=dtype),
        fdl.nn.ReLU(),
        fdl.nn.MaxPool2d(2),
        fdl.nn.Conv2d(4, 6, 3, padding=1, dtype=dtype),
        fdl.nn.ReLU(),
        fdl.nn.MaxPool2d(2),
        fdl.nn.Flatten(),
        fdl.nn.Linear(6 * 2 * 2, 3, dtype=dtype),
    )


def _setup(dtype: torch.dtype) -> tuple[Any, Any, Any, list[tuple[torch.Tensor, torch.Tensor]]]:
    model = _model(dtype)
    opt = fdl.optim.adam(lr=1e-2)
    params = model.init(fdl.random.key(0))
    batches = []
    for i in range(STEPS):
        kx, ky = fdl.random.split(fdl.random.fold_in(fdl.random.key(1), i))
        batches.append(
            (fdl.random.normal(kx, (5, 1, 8, 8), dtype=dtype), fdl.random.randint(ky, (5,), 0, 3))
        )
    return model, opt, params, batches


def _train(step: Any, opt: Any, params: Any, batches: list) -> tuple[Any, Any, list]:
    state, losses = opt.init(params), []
    for x, y in batches:
        params, state, loss = step(params, state, x, y)
        losses.append(loss)
    return params, state, losses


def _loss_fn(model: Any) -> Any:
    return lambda p, x, y: fdl.losses.cross_entropy(model.apply(p, x), y)


def _assert_torch_layout(got: Any, like: Any) -> None:
    """Same keys, shapes and strides as ``like`` (torch's default layout)."""
    got_sd, like_sd = fdl.nn.state_dict(got), fdl.nn.state_dict(like)
    assert list(got_sd) == list(like_sd)
    for k in like_sd:
        assert got_sd[k].shape == like_sd[k].shape and got_sd[k].stride() == like_sd[k].stride(), k


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_eager_channels_last_step_gives_the_default_params(dtype: torch.dtype) -> None:
    model, opt, params, batches = _setup(dtype)
    loss_fn = _loss_fn(model)
    want = _train(fdl.train.make_train_step(loss_fn, opt, compile=False), opt, params, batches)
    cl_step = fdl.train.make_train_step(loss_fn, opt, compile=False, memory_format="channels_last")
    got = _train(cl_step, opt, params, batches)
    assert_trees_close(got, want, rtol=TOL[dtype], atol=TOL[dtype])
    _assert_torch_layout(got[0], params)


def test_the_step_runs_on_channels_last_strides() -> None:
    """Inside the step every 4-d tensor is channels-last: conv and pool outputs stay so."""
    model, opt, params, batches = _setup(torch.float64)
    seen: list[bool] = []

    def loss_fn(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = fdl.nn.functional.conv2d(x, p["0"]["weight"], p["0"]["bias"], padding=1)
        pooled = fdl.nn.functional.max_pool2d(torch.relu(h), 2)
        seen.extend(t.is_contiguous(memory_format=CL) and t.stride(1) == 1 for t in (x, h, pooled))
        return _loss_fn(model)(p, x, y)

    step = fdl.train.make_train_step(loss_fn, opt, compile=False, memory_format="channels_last")
    step(params, opt.init(params), *batches[0])
    assert seen == [True, True, True]


def test_donated_channels_last_step_writes_into_its_inputs() -> None:
    model, opt, params, batches = _setup(torch.float64)
    loss_fn = _loss_fn(model)
    want = fdl.train.make_train_step(loss_fn, opt, compile=False)(
        params, opt.init(params), *batches[0]
    )
    mine = fdl.tree.map(torch.clone, params)
    state = opt.init(mine)
    step = fdl.train.make_train_step(
        loss_fn, opt, compile=False, donate=True, memory_format="channels_last"
    )
    new_params, new_state, _ = step(mine, state, *batches[0])
    assert new_params is mine and new_state is state
    assert_trees_close(new_params, want[0], rtol=1e-10, atol=1e-10)
    _assert_torch_layout(new_params, params)


@pytest.fixture(scope="module")
def compiled_run() -> dict[str, Any]:
    torch._dynamo.reset()
    model, opt, params, batches = _setup(torch.float32)
    loss_fn = _loss_fn(model)
    step = fdl.train.make_train_step(loss_fn, opt, memory_format="channels_last")
    counts = torch._dynamo.utils.counters
    before = counts["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = _train(step, opt, params, batches)
    want = _train(fdl.train.make_train_step(loss_fn, opt, compile=False), opt, params, batches)
    return {
        "got": got,
        "want": want,
        "params": params,
        "graphs": counts["stats"]["unique_graphs"] - before,
    }


def test_compiled_channels_last_step_gives_the_default_params(compiled_run: dict) -> None:
    assert_trees_close(compiled_run["got"], compiled_run["want"], rtol=1e-5, atol=1e-5)
    _assert_torch_layout(compiled_run["got"][0], compiled_run["params"])


def test_compiled_channels_last_step_compiles_once(compiled_run: dict) -> None:
    assert compiled_run["graphs"] == 1  # and error_on_recompile held over every step


def test_fit_takes_the_switch() -> None:
    model, opt, params, batches = _setup(torch.float64)
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    runs = [
        fdl.train.fit(
            model.apply,
            fdl.losses.cross_entropy,
            opt,
            params,
            (x, y),
            val_data=(x, y),
            key=fdl.random.key(2),
            batch_size=4,
            compile=False,
            progress=False,
            memory_format=fmt,
        )
        for fmt in ("preserve", "channels_last")
    ]
    assert_trees_close(runs[1].params, runs[0].params, rtol=1e-10, atol=1e-10)
    for a, b in zip(runs[1].history, runs[0].history, strict=True):
        assert a.keys() == b.keys()
        for k in ("train_loss", "val_loss", "val_accuracy"):
            assert a[k] == pytest.approx(b[k], rel=1e-10, abs=1e-10), k


@pytest.mark.parametrize(
    "build",
    [
        lambda fmt: fdl.train.make_train_step(
            lambda p, x: x.sum(), fdl.optim.sgd(lr=0.1), memory_format=fmt
        ),
        lambda fmt: fdl.train.make_eval_step(lambda p, x: x, memory_format=fmt),
    ],
    ids=["train", "eval"],
)
def test_unknown_memory_format_is_value_error(build: Any) -> None:
    with pytest.raises(ValueError, match="memory_format must be one of"):
        build("nhwc")
