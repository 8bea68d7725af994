"""Tests for fdl.monitor: the TensorBoard round trip and the non-finite stop / skip."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch._dynamo.testing as dynamo_testing

import fdl
from fdl import monitor, reporting, train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

MODEL = fdl.nn.Sequential(fdl.nn.Linear(4, 5), fdl.nn.ReLU(), fdl.nn.Linear(5, 3))
SCHEDULE = fdl.optim.schedules.StepLR(0.2, step_size=2, gamma=0.5)
N, BATCH, EPOCHS = 40, 16, 2  # 3 steps per epoch, the last one padded
STEPS = 3
HIST_EVERY = 2


class _Recorder(reporting.Reporter):
    """Keeps every on_step dict (tensors as handed over: fit never modifies them)."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_step(self, info):
        self.steps.append(dict(info))


def _data(seed: int, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    k1, k2 = fdl.random.split(fdl.random.key(seed))
    return fdl.random.normal(k1, (n, 4)), fdl.random.randint(k2, (n,), 0, 3)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One fit with a recorder and a TensorBoard reporter, and the event files read back."""
    log_dir = tmp_path_factory.mktemp("tb")
    rec = _Recorder()
    tb = monitor.TensorBoard(log_dir, every=1, histogram_every=HIST_EVERY, lr=SCHEDULE)
    res = train.fit(
        MODEL.apply,
        fdl.losses.cross_entropy,
        fdl.optim.sgd(lr=SCHEDULE),
        MODEL.init(fdl.random.key(0)),
        _data(1),
        key=fdl.random.key(2),
        epochs=EPOCHS,
        batch_size=BATCH,
        val_data=_data(3, 24),
        compile=False,
        progress=False,
        reporters=[rec, tb],
    )
    tb.close()
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return res, rec, acc


def _scalars(acc, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def _f32(v: float) -> float:
    return torch.tensor(v, dtype=torch.float32).item()


def test_step_scalars_equal_the_steps(run) -> None:
    _, rec, acc = run
    assert [s["global_step"] for s in rec.steps] == list(range(EPOCHS * STEPS))
    losses = _scalars(acc, "train/loss")
    accs = _scalars(acc, "train/accuracy")
    assert sorted(losses) == sorted(accs) == list(range(EPOCHS * STEPS))
    for s in rec.steps:
        g, b = s["global_step"], s["batch_sums"]
        assert losses[g] == _f32(float(s["loss"]))
        assert accs[g] == _f32(float(b["correct"]) / float(b["count"]))


def test_lr_is_the_schedule_and_the_rate_the_optimizer_used(run) -> None:
    _, rec, acc = run
    lrs = _scalars(acc, "train/lr")
    assert sorted(lrs) == list(range(EPOCHS * STEPS))
    for g, v in lrs.items():
        assert v == _f32(float(SCHEDULE(torch.tensor(g))))
    for s in rec.steps:  # plain SGD: p_new - p = -lr * grad
        if "grads" not in s:
            continue
        delta = fdl.tree.sub(s["params"], s["prev_params"])
        used = fdl.tree.global_norm(delta) / fdl.tree.global_norm(s["grads"])
        assert float(used) == pytest.approx(lrs[s["global_step"]], rel=1e-5)


def test_epoch_scalars_equal_the_history(run) -> None:
    res, _, acc = run
    for key, tag in [
        ("train_loss", "epoch/train_loss"),
        ("train_accuracy", "epoch/train_accuracy"),
        ("val_loss", "val/loss"),
        ("val_accuracy", "val/accuracy"),
    ]:
        got = _scalars(acc, tag)
        assert got == {r["epoch"]: _f32(r[key]) for r in res.history}


def test_histograms_of_params_and_grads(run) -> None:
    _, rec, acc = run
    hist_steps = [s for s in rec.steps if s["global_step"] % HIST_EVERY == 0]
    assert [s["global_step"] for s in hist_steps] == [0, 2, 4]
    assert all("grads" in s and "updates" in s for s in hist_steps)
    assert not any("grads" in s for s in rec.steps if s["global_step"] % HIST_EVERY)
    paths = fdl.tree.paths(rec.steps[0]["params"])
    tags = set(acc.Tags()["histograms"])
    assert tags == {f"params/{p}" for p in paths} | {f"grads/{p}" for p in paths}
    for prefix, key in [("params", "prev_params"), ("grads", "grads")]:
        for p in paths:
            events = {e.step: e.histogram_value for e in acc.Histograms(f"{prefix}/{p}")}
            assert sorted(events) == [0, 2, 4]
            for s in hist_steps:
                h, leaf = events[s["global_step"]], _leaf(s[key], p)
                assert h.num == leaf.numel()
                assert h.min == pytest.approx(float(leaf.min()), rel=1e-6, abs=1e-7)
                assert h.max == pytest.approx(float(leaf.max()), rel=1e-6, abs=1e-7)
                assert h.sum == pytest.approx(float(leaf.double().sum()), rel=1e-5, abs=1e-6)


def _leaf(tree, path: str) -> torch.Tensor:
    ps, lvs, _ = fdl.tree.flatten_with_paths(tree)
    return lvs[ps.index(path)]


def test_update_ratio_recomputed_from_the_params(run) -> None:
    _, rec, acc = run
    paths = fdl.tree.paths(rec.steps[0]["params"])
    assert {t for t in acc.Tags()["scalars"] if t.startswith("update_ratio/")} == {
        f"update_ratio/{p}" for p in paths
    }
    for p in paths:
        got = _scalars(acc, f"update_ratio/{p}")
        assert sorted(got) == [0, 2, 4]
        for s in rec.steps:
            if s["global_step"] in got:
                before, after = _leaf(s["prev_params"], p), _leaf(s["params"], p)
                want = float((after - before).double().norm() / before.double().norm())
                assert got[s["global_step"]] == pytest.approx(want, rel=1e-5)


def test_update_ratios_zero_param() -> None:
    r = monitor.update_ratios(
        {"a": torch.zeros(2), "b": torch.zeros(2)}, {"a": torch.ones(2), "b": torch.zeros(2)}
    )
    assert r["a"] == math.inf and math.isnan(r["b"])


def test_missing_tensorboard_names_the_extra(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install fdl\[monitor\]"):
        monitor.TensorBoard(tmp_path)


@pytest.mark.parametrize("histogram_every, frames", [(None, 1), (2, 2)])
def test_probe_step_only_when_asked(tmp_path, histogram_every, frames) -> None:
    """The plain compiled step is untouched; a reporter asking for grads adds one probe graph."""
    counter = dynamo_testing.CompileCounter()
    tb = monitor.TensorBoard(tmp_path, histogram_every=histogram_every)
    train.fit(
        MODEL.apply,
        fdl.losses.cross_entropy,
        fdl.optim.sgd(lr=0.1),
        MODEL.init(fdl.random.key(0)),
        _data(1),
        key=fdl.random.key(2),
        epochs=2,
        batch_size=BATCH,
        compile={"backend": counter},
        progress=False,
        reporters=[tb],
    )
    tb.close()
    assert counter.frame_count == frames  # no recompiles across 6 steps


# --------------------------------------------------------------------------- non-finite

FLAGGED = 5  # the one sample whose loss term is sqrt(-1) = nan
NF_N, NF_BATCH = 32, 8  # 4 steps per epoch, no padding


def _nf_params() -> dict:
    return {"lin": fdl.nn.Linear(3, 2).init(fdl.random.key(4)), "probe": {"t": torch.tensor(1.0)}}


def _nf_apply(params, x, key=None, train=False):
    """Logits and a last column ``t * sqrt(-flag)``: nan (and a nan grad of t) on a flagged row."""
    logits = fdl.nn.Linear(3, 2).apply(params["lin"], x[:, :3])  # (B, 2)
    extra = params["probe"]["t"] * torch.sqrt(-x[:, 3])  # (B,)
    return torch.cat([logits, extra[:, None]], dim=1)  # (B, 3)


def _nf_loss(out, y, reduction="none"):
    return fdl.losses.cross_entropy(out[:, :2], y, reduction="none") + out[:, 2]


def _nf_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _data(5, NF_N)
    flag = torch.zeros(NF_N)
    flag[FLAGGED] = 1.0
    return torch.cat([x[:, :3], flag[:, None]], dim=1), y % 2


def _nf_fit(reporters, epochs=1, start_epoch=0):
    return train.fit(
        _nf_apply,
        _nf_loss,
        fdl.optim.sgd(lr=0.1),
        _nf_params(),
        _nf_data(),
        key=fdl.random.key(6),
        epochs=epochs,
        start_epoch=start_epoch,
        batch_size=NF_BATCH,
        accuracy=False,
        compile=False,
        progress=False,
        reporters=reporters,
    )


@pytest.mark.parametrize("check_grads", [True, False])
def test_non_finite_stops_naming_step_epoch_and_path(tmp_path, check_grads) -> None:
    rec, ckpt = _Recorder(), tmp_path / "last_finite.safetensors"
    nf = monitor.NonFinite(check_grads=check_grads, checkpoint=ckpt)
    with pytest.raises(monitor.NonFiniteError) as info:
        _nf_fit([rec, nf], epochs=2, start_epoch=2)
    err, bad = info.value, rec.steps[-1]
    assert all(math.isfinite(float(s["loss"])) for s in rec.steps[:-1])
    assert math.isnan(float(bad["loss"]))
    assert (err.epoch, err.step) == (3, bad["step"]) and err.global_step == 2 * 4 + bad["step"]
    # only t's gradient (and so only t after the update) is non-finite; it is not the first leaf
    assert err.path == "probe.t" and fdl.tree.paths(_nf_params())[0] != "probe.t"
    msg = str(err)
    assert f"epoch 3, step {bad['step']}" in msg and "'probe.t'" in msg
    assert ("first non-finite gradient: 'probe.t'" in msg) == check_grads
    # the last finite state: what the bad step started from
    assert bool(fdl.tree.all_finite(err.params))
    fdl.testing.assert_trees_close(err.params, bad["prev_params"], rtol=0, atol=0)
    saved = fdl.checkpoint.load(ckpt)
    fdl.testing.assert_trees_close(saved["params"], err.params, rtol=0, atol=0)
    assert fdl.checkpoint.read_metadata(ckpt)["path"] == "probe.t"


def test_non_finite_skip_drops_the_step() -> None:
    epochs = 3
    rec, nf = _Recorder(), monitor.NonFinite("skip")
    res = _nf_fit([rec, nf], epochs=epochs)
    # the flagged sample is in exactly one batch per epoch
    assert [s["epoch"] for s in nf.skipped] == list(range(1, epochs + 1))
    assert all(s["path"] == "probe.t" for s in nf.skipped)
    bad = {s["global_step"] for s in nf.skipped}
    assert {s["global_step"] for s in rec.steps if math.isnan(float(s["loss"]))} == bad
    by_step = {s["global_step"]: s for s in rec.steps}
    for g in bad:  # the step after a skipped one starts from the skipped one's start
        if g + 1 in by_step:
            fdl.testing.assert_trees_close(
                by_step[g + 1]["prev_params"], by_step[g]["prev_params"], rtol=0, atol=0
            )
    assert bool(fdl.tree.all_finite(res.params))
    for r in res.history:  # the epoch loss counts the kept steps only
        kept = [s for s in rec.steps if s["epoch"] == r["epoch"] and s["global_step"] not in bad]
        loss_sum = sum(float(s["batch_sums"]["loss_sum"]) for s in kept)
        count = sum(float(s["batch_sums"]["count"]) for s in kept)
        assert r["train_loss"] == pytest.approx(loss_sum / count, rel=1e-6)


def test_non_finite_max_skips_then_stops() -> None:
    nf = monitor.NonFinite("skip", max_skips=1)
    with pytest.raises(monitor.NonFiniteError, match="max_skips=1") as info:
        _nf_fit([nf], epochs=3)
    assert info.value.epoch == 2 and len(nf.skipped) == 2


def test_non_finite_finite_run_untouched() -> None:
    x, y = _nf_data()
    ref = _nf_fit([])
    assert math.isnan(ref.history[0]["train_loss"])  # the flagged run goes nan unchecked
    clean = train.fit(
        _nf_apply,
        _nf_loss,
        fdl.optim.sgd(lr=0.1),
        _nf_params(),
        (x.clone().index_fill_(1, torch.tensor([3]), 0.0), y),
        key=fdl.random.key(6),
        batch_size=NF_BATCH,
        accuracy=False,
        compile=False,
        progress=False,
        reporters=[monitor.NonFinite()],
    )
    assert math.isfinite(clean.history[0]["train_loss"])


def test_non_finite_bad_option() -> None:
    with pytest.raises(ValueError, match="'stop' or 'skip'"):
        monitor.NonFinite("ignore")


def test_docs_page_runs(tmp_path, monkeypatch) -> None:
    from _doc_examples import run_python_blocks

    monkeypatch.chdir(tmp_path)
    ns = run_python_blocks("monitoring.md")
    assert (tmp_path / "last_finite.safetensors").exists()
    assert any((tmp_path / "runs" / "demo").iterdir())
    assert len(ns["skip"].skipped) == 2


def test_non_finite_gradient_with_finite_loss() -> None:
    """sqrt(t * f) at f = 0: the loss term is 0, its gradient in t is inf * 0 = nan."""

    def apply(params, x, key=None, train=False):
        logits = fdl.nn.Linear(3, 2).apply(params["lin"], x[:, :3])  # (B, 2)
        extra = torch.sqrt(params["probe"]["t"] * (1.0 - x[:, 3]))  # (B,): 0 on the flagged row
        return torch.cat([logits, extra[:, None]], dim=1)  # (B, 3)

    rec = _Recorder()
    with pytest.raises(monitor.NonFiniteError, match="loss is finite") as info:
        train.fit(
            apply,
            _nf_loss,
            fdl.optim.sgd(lr=0.1),
            _nf_params(),
            _nf_data(),
            key=fdl.random.key(6),
            batch_size=NF_BATCH,
            accuracy=False,
            compile=False,
            progress=False,
            reporters=[rec, monitor.NonFinite()],
        )
    assert math.isfinite(float(rec.steps[-1]["loss"]))
    assert monitor.first_non_finite(rec.steps[-1]["grads"]) == "probe.t"
    assert info.value.path == "probe.t" and info.value.step == rec.steps[-1]["step"]
    assert "first non-finite gradient: 'probe.t'" in str(info.value)
