"""Tests for fdl.train: train/eval steps, recompiles, predict, evaluate and fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch._dynamo.testing as dynamo_testing

import fdl
from fdl import reporting, train
from fdl.testing import assert_pure, assert_trees_close

# --------------------------------------------------------------------------- registries

# (name, fdl optimizer, torch optimizer on a list of leaf tensors)
OPTIMIZERS = [
    (
        "sgd_momentum",
        lambda: fdl.optim.sgd(lr=0.1, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    ),
    ("adam", lambda: fdl.optim.adam(lr=1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2)),
]

# (name, fdl per-sample loss taking reduction=, torch loss, targets maker)
LOSSES = [
    (
        "cross_entropy",
        fdl.losses.cross_entropy,
        torch.nn.functional.cross_entropy,
        lambda k, n: fdl.random.randint(k, (n,), 0, 3),
    ),
    (
        "mse_loss",
        fdl.losses.mse_loss,
        torch.nn.functional.mse_loss,
        lambda k, n: fdl.random.normal(k, (n, 3)),
    ),
]

MODEL = fdl.nn.Linear(4, 3)


def _batch(n: int = 20, seed: int = 0, loss_entry=LOSSES[0]) -> tuple[torch.Tensor, torch.Tensor]:
    kx, ky = fdl.random.split(fdl.random.key(seed))
    return fdl.random.normal(kx, (n, 4)), loss_entry[3](ky, n)


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    return MODEL.init(fdl.random.key(seed))


def _loss_fn(fdl_loss):
    def loss_fn(params, x, y):
        return fdl_loss(MODEL.apply(params, x), y)

    return loss_fn


# --------------------------------------------------------------------------- make_train_step


@pytest.mark.parametrize("oname, fdl_opt, torch_opt", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
@pytest.mark.parametrize("lname, fdl_loss, torch_loss, targets", LOSSES, ids=[l[0] for l in LOSSES])
def test_train_step_matches_torch_loop(
    oname, fdl_opt, torch_opt, lname, fdl_loss, torch_loss, targets
) -> None:
    params = _params()
    opt = fdl_opt()
    state = opt.init(params)
    step = train.make_train_step(_loss_fn(fdl_loss), opt, compile=False)
    ref = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref_opt = torch_opt(list(ref.values()))
    for i in range(4):
        x, y = _batch(seed=i, loss_entry=(None, None, None, targets))
        params, state, loss = step(params, state, x, y)
        ref_opt.zero_grad()
        ref_loss = torch_loss(torch.nn.functional.linear(x, ref["weight"], ref["bias"]), y)
        ref_loss.backward()
        ref_opt.step()
        # loss at the incoming params, as read before opt.step() in a torch loop
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-6, atol=1e-6)
        for k in params:
            torch.testing.assert_close(params[k], ref[k].detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("oname, fdl_opt, torch_opt", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_train_step_is_pure(oname, fdl_opt, torch_opt) -> None:
    opt = fdl_opt()
    params = _params()
    state = opt.init(params)
    x, y = _batch()
    step = train.make_train_step(_loss_fn(fdl.losses.cross_entropy), opt, compile=False)
    out1 = assert_pure(step, params, state, x, y)
    out2 = assert_pure(step, params, state, x, y)
    assert_trees_close(out1, out2, rtol=0, atol=0)


def test_train_step_has_aux() -> None:
    opt = fdl.optim.sgd(lr=0.1)
    params = _params()

    def loss_fn(p, x, y):
        logits = MODEL.apply(p, x)
        return fdl.losses.cross_entropy(logits, y), {"logits": logits}

    step = train.make_train_step(loss_fn, opt, has_aux=True, compile=False)
    x, y = _batch()
    new_params, _, loss, aux = step(params, opt.init(params), x, y)
    torch.testing.assert_close(aux["logits"], MODEL.apply(params, x))  # at the incoming params
    torch.testing.assert_close(loss, fdl.losses.cross_entropy(aux["logits"], y))
    assert not fdl.tree.allclose(new_params, params)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (("not callable", None), {}, TypeError, "loss_fn must be callable"),
        ((lambda p: p, object()), {}, TypeError, "GradientTransformation"),
        ((lambda p: p, None), {"compile": "yes"}, TypeError, "compile must be a bool"),
    ],
)
def test_make_train_step_errors(args, kwargs, error, match) -> None:
    if args[1] is None:
        args = (args[0], fdl.optim.sgd(lr=0.1))
    with pytest.raises(error, match=match):
        train.make_train_step(*args, **kwargs)


# --------------------------------------------------------------------------- recompiles


def test_compiled_step_does_not_recompile() -> None:
    counter = dynamo_testing.CompileCounterWithBackend("aot_eager")
    opt = fdl.optim.adam(lr=1e-2)
    params = _params()
    state = opt.init(params)
    step = train.make_train_step(
        _loss_fn(fdl.losses.cross_entropy), opt, compile={"backend": counter}
    )
    eager = train.make_train_step(_loss_fn(fdl.losses.cross_entropy), opt, compile=False)
    ref_params, ref_state = params, state

    def both(i: int) -> None:
        nonlocal params, state, ref_params, ref_state
        x, y = _batch(seed=i)
        params, state, loss = step(params, state, x, y)
        ref_params, ref_state, ref_loss = eager(ref_params, ref_state, x, y)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)

    both(0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(1, 5):
            both(i)
    assert counter.frame_count == 1
    assert_trees_close(params, ref_params, rtol=1e-5, atol=1e-6)


def test_each_step_has_its_own_compile_cache() -> None:
    # steps built by one factory must not share (and exhaust) one recompile limit
    counter = dynamo_testing.CompileCounter()
    x, y = _batch()
    with torch._dynamo.config.patch(recompile_limit=2):
        for i in range(4):
            loss_fn = eval(f"lambda p, x, y: {i + 1.0} * ((x @ p['w']) ** 2).mean()")
            opt = fdl.optim.sgd(lr=0.1)
            params = {"w": torch.ones(4)}
            step = train.make_train_step(loss_fn, opt, compile={"backend": counter})
            _, _, loss = step(params, opt.init(params), x, y)
            torch.testing.assert_close(loss, loss_fn(params, x, y))
    assert counter.frame_count == 4


def test_a_step_keeps_its_sizes_whatever_steps_were_built_before() -> None:
    # dynamo records per function identity which input sizes changed; a step built for
    # other sizes must not make this step's sizes dynamic (its graph would then guard on
    # the ``_base`` of the view params, which the step's outputs lack, and recompile)
    for n, m in ((3, 2), (5, 4)):
        counter = dynamo_testing.CompileCounter()
        opt = fdl.optim.sgd(lr=0.1)
        params = {"w": torch.ones(n + 1, m)[1:]}  # a view, as init's params can be
        step = train.make_train_step(
            lambda p, x: (x @ p["w"]).square().mean(), opt, compile={"backend": counter}
        )
        x = torch.ones(2, n)
        params, state, _ = step(params, opt.init(params), x)
        with torch._dynamo.config.patch(error_on_recompile=True):
            step(params, state, x)
        assert counter.frame_count == 1


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One compiled fit: 3 epochs of 50 samples (batch 16, last 2) and 21 validation samples."""
    counter = dynamo_testing.CompileCounterWithBackend("aot_eager")
    x, y = _batch(50, seed=1)
    xv, yv = _batch(21, seed=2)
    seen = []
    path = tmp_path_factory.mktemp("fit") / "history.json"
    res = train.fit(
        MODEL.apply,
        fdl.losses.cross_entropy,
        fdl.optim.adam(lr=0.05),
        _params(),
        (x, y),
        key=fdl.random.key(3),
        epochs=3,
        batch_size=16,
        val_data=(xv, yv),
        eval_batch_size=8,
        compile={"backend": counter},
        progress=False,
        history_path=path,
        callback=seen.append,
    )
    return {"res": res, "counter": counter, "path": path, "seen": seen, "val": (xv, yv)}


def test_fit_compiles_once_per_step_kind(fit_run: dict) -> None:
    # one graph for the train step, one for the eval step: none for later steps,
    # later epochs, or the final partial batches (padded and masked)
    assert fit_run["counter"].frame_count == 2


def test_fit_history(fit_run: dict) -> None:
    history = fit_run["res"].history
    assert [r["epoch"] for r in history] == [1, 2, 3]
    keys = {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "time_s"}
    assert keys | {"samples_per_s"} == set(history[0])
    assert json.loads(Path(fit_run["path"]).read_text()) == history
    assert fit_run["seen"] == history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # validation uses every sample, with the final params
    xv, yv = fit_run["val"]
    logits = MODEL.apply(fit_run["res"].params, xv)
    ref_loss = torch.nn.functional.cross_entropy(logits, yv)
    assert history[-1]["val_loss"] == pytest.approx(float(ref_loss), rel=1e-5)
    acc = float((logits.argmax(1) == yv).float().mean())
    assert history[-1]["val_accuracy"] == pytest.approx(acc)


def _fit(epochs: int, **kwargs):
    x, y = _batch(50, seed=1)
    return train.fit(
        MODEL.apply,
        fdl.losses.cross_entropy,
        fdl.optim.adam(lr=0.05),
        kwargs.pop("params", _params()),
        (x, y),
        key=fdl.random.key(3),
        epochs=epochs,
        batch_size=16,
        compile=False,
        progress=False,
        **kwargs,
    )


def test_fit_padded_batches_equal_unpadded_loop() -> None:
    res = _fit(1)
    x, y = _batch(50, seed=1)
    opt = fdl.optim.adam(lr=0.05)
    params = _params()
    state = opt.init(params)
    step = train.make_train_step(_loss_fn(fdl.losses.cross_entropy), opt, compile=False)
    k_order = fdl.random.split(fdl.random.fold_in(fdl.random.key(3), 0), 3)[0]
    losses = []
    for xb, yb in fdl.data.batches(x, y, batch_size=16, key=k_order):
        params, state, loss = step(params, state, xb, yb)
        losses.append(loss * len(yb))
    assert_trees_close(res.params, params, rtol=1e-6, atol=1e-6)
    assert res.history[0]["train_loss"] == pytest.approx(float(sum(losses)) / 50, rel=1e-6)


def test_fit_resume_is_exact() -> None:
    full = _fit(2)
    first = _fit(1)
    second = _fit(1, params=first.params, opt_state=first.opt_state, start_epoch=1)
    assert_trees_close(full.params, second.params, rtol=0, atol=0)
    assert_trees_close(full.opt_state, second.opt_state, rtol=0, atol=0)
    assert full.history[1]["train_loss"] == second.history[0]["train_loss"]


def test_fit_augment_and_determinism() -> None:
    def aug(k, x):
        return x + 0.01 * fdl.random.normal(k, tuple(x.shape))

    a, b = _fit(1, augment=aug), _fit(1, augment=aug)
    assert_trees_close(a.params, b.params, rtol=0, atol=0)
    assert not fdl.tree.allclose(a.params, _fit(1).params, rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- eval, predict


def test_evaluate_uses_every_sample() -> None:
    params = _params()
    x, y = _batch(23, seed=5)
    got = train.evaluate(MODEL.apply, fdl.losses.cross_entropy, params, (x, y), batch_size=5)
    logits = MODEL.apply(params, x)
    assert got["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)))
    assert got["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


def test_make_eval_step_no_grad() -> None:
    params = {k: v.requires_grad_(True) for k, v in _params().items()}
    ev = train.make_eval_step(MODEL.apply, compile=False)
    out = ev(params, _batch()[0])
    assert not out.requires_grad


@pytest.mark.parametrize(
    "output, reference",
    [
        ("logits", lambda z: z),
        ("probs", lambda z: torch.softmax(z, dim=1)),
        ("classes", lambda z: z.argmax(dim=1)),
    ],
)
def test_predict_outputs(output: str, reference) -> None:
    params = _params()
    x, _ = _batch(23, seed=6)
    got = train.predict(MODEL.apply, params, x, 5, output=output)
    ref = reference(MODEL.apply(params, x))
    assert got.shape[0] == 23
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    if output == "probs":  # log-probabilities give the same probabilities
        log_p = lambda p, x: torch.log_softmax(MODEL.apply(p, x), dim=1)  # noqa: E731
        torch.testing.assert_close(
            train.predict(log_p, params, x, 5, output="probs"), ref, rtol=1e-6, atol=1e-6
        )


def test_predict_compiled_single_shape() -> None:
    counter = dynamo_testing.CompileCounter()
    params = _params()
    x, _ = _batch(23, seed=7)
    got = train.predict(MODEL.apply, params, x, 5, compile={"backend": counter})
    torch.testing.assert_close(got, MODEL.apply(params, x), rtol=1e-6, atol=1e-6)
    assert counter.frame_count == 1  # the final batch of 3 is padded to 5


def test_predict_errors() -> None:
    with pytest.raises(ValueError, match="output must be one of"):
        train.predict(MODEL.apply, _params(), torch.ones(2, 4), output="labels")
    with pytest.raises(ValueError, match="empty"):
        train.predict(MODEL.apply, _params(), torch.ones(0, 4))


# --------------------------------------------------------------------------- reporters


class _Recorder(reporting.Reporter):
    """Records every hook call (name and a copy of its dict's keys and step losses)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def on_fit_start(self, info):
        self.calls.append(("on_fit_start", dict(info)))

    def on_epoch_start(self, info):
        self.calls.append(("on_epoch_start", dict(info)))

    def on_step(self, info):
        self.calls.append(("on_step", dict(info)))

    def on_epoch_end(self, record):
        self.calls.append(("on_epoch_end", dict(record)))

    def on_fit_end(self, info):
        self.calls.append(("on_fit_end", dict(info)))


def test_fit_calls_reporter_hooks_in_order() -> None:
    rec = _Recorder()
    res = _fit(2, reporters=[rec])
    names = [name for name, _ in rec.calls]
    epoch = ["on_epoch_start", *["on_step"] * 4, "on_epoch_end"]  # 50 samples = 16+16+16+2
    assert names == ["on_fit_start", *epoch, *epoch, "on_fit_end"]
    steps = [info for name, info in rec.calls if name == "on_step"]
    assert [s["samples"] for s in steps[:4]] == [16, 32, 48, 50]
    assert [s["step"] for s in steps[:4]] == [0, 1, 2, 3]
    # the running sums of the last step of an epoch give the epoch's train loss
    assert reporting.summarize(steps[3]["sums"])["loss"] == pytest.approx(
        res.history[0]["train_loss"]
    )
    assert [info for name, info in rec.calls if name == "on_epoch_end"] == res.history
    end = rec.calls[-1][1]
    assert end["history"] == res.history
    assert_trees_close(end["params"], res.params, rtol=0, atol=0)


def test_fit_default_reporters_come_first(tmp_path: Path) -> None:
    order: list[str] = []

    class Last(reporting.Reporter):
        def on_epoch_end(self, record):
            # the history file is already written when later reporters run
            order.append("reporter")
            assert json.loads((tmp_path / "h.json").read_text())[-1] == record

    _fit(
        1,
        history_path=tmp_path / "h.json",
        callback=lambda r: order.append("callback"),
        reporters=[Last()],
    )
    assert order == ["callback", "reporter"]


def test_duck_typed_reporter_with_one_hook() -> None:
    seen = []

    class OnlyEnd:
        def on_fit_end(self, info):
            seen.append(len(info["history"]))

    _fit(2, reporters=[OnlyEnd()])
    assert seen == [2]


def test_progress_bar_reporter_runs(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = _batch(50, seed=1)
    opt = fdl.optim.sgd(lr=0.1)
    train.fit(
        MODEL.apply, fdl.losses.cross_entropy, opt, _params(), (x, y), key=fdl.random.key(3),
        batch_size=16, compile=False, progress=True,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "50/50" in err and "loss=" in err


def test_notify_rejects_unknown_hook() -> None:
    with pytest.raises(ValueError, match="unknown hook"):
        reporting.notify([], "on_batch", {})
