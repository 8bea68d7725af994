"""fdl.distributed: data-parallel steps over real gloo process groups on loopback.

Workers live in tests/_distributed_workers.py and are started as separate
processes (the ``spawn`` start method, with the environment ``torchrun`` sets),
bounded in time; they write results to files that the tests compare with the
same steps run in this single process.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import _distributed_workers as W
import pytest
import torch

import fdl
from fdl import distributed as dist

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    fn: Any, world: int, *args: Any, timeout: float = 120.0, grace: float | None = None
) -> list[int | None]:
    """Run ``fn(rank, world, port, *args)`` in ``world`` spawned processes; their exit codes."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=fn, args=(r, world, port, *args)) for r in range(world)]
    for p in procs:
        p.start()
    procs[0].join(timeout)
    for p in procs[1:]:  # once rank 0 is done, the others get a short grace
        p.join(grace if grace is not None and not procs[0].is_alive() else timeout)
    codes = []
    for p in procs:
        if p.is_alive():  # never leave a process behind
            p.kill()
            p.join()
        codes.append(p.exitcode)
    return codes


def _single_process_reference() -> dict[str, Any]:
    """The same steps in one process on the whole batch (no process group)."""
    assert not dist.is_initialized()
    model, params, x, y = W.problem()
    out: dict[str, Any] = {}
    for name, opt in W.optimizers().items():
        step = fdl.train.make_train_step(W.loss_fn_for(model), opt, compile=False)
        _, _, losses, history = W.run_steps(step, params, opt.init(params), x, y, 0, W.STEPS)
        out[name] = (history, torch.stack(losses))
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return _single_process_reference()


@pytest.mark.parametrize(
    ("world", "compile", "names"),
    [(2, False, ("sgd", "adam")), (4, False, ("sgd", "adam")), (2, True, ("adam",))],
)
def test_ranks_equal_one_process_with_the_global_batch(tmp_path, reference, world, compile, names):
    codes = launch(W.equivalence, world, str(tmp_path), compile, names, timeout=600.0)
    assert codes == [0] * world
    results = [fdl.checkpoint.load(tmp_path / f"rank{r}.safetensors") for r in range(world)]
    for name in names:
        history, losses = reference[name]
        for s, expected in enumerate(history):
            for r in range(world):
                assert bool(results[r][f"{name}.identical.{s}"]), (name, s)  # bit-identical ranks
            for k, v in fdl.tree.to_flat_dict(expected).items():
                # float64: W partial means averaged vs one mean over B rows differ by rounding
                torch.testing.assert_close(
                    results[0][f"{name}.step{s}.{k}"], v, rtol=1e-12, atol=1e-12
                )
        torch.testing.assert_close(results[0][f"{name}.losses"], losses, rtol=1e-12, atol=1e-12)


def test_checkpoint_from_two_ranks_resumes_on_one(tmp_path, reference):
    ckpt = str(tmp_path / "ckpt.safetensors")
    assert launch(W.resume, 2, str(tmp_path), ckpt, 0) == [0, 0]
    assert Path(ckpt).is_file() and not list(tmp_path.glob("*.tmp*"))  # rank 0 wrote it, whole
    assert launch(W.resume, 1, str(tmp_path), ckpt, 2) == [0]
    got = fdl.checkpoint.load(tmp_path / "rank0.safetensors")
    expected = fdl.tree.to_flat_dict(reference["adam"][0][-1])
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("how", ["raise", "kill", "hang"])
def test_a_failing_rank_makes_the_others_fail_fast_naming_it(tmp_path, how):
    codes = launch(W.failing, 2, str(tmp_path), how, timeout=90.0, grace=5.0)
    assert codes[1] != 0
    assert codes[0] == 0  # rank 0 caught its error and wrote it
    elapsed, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert message.startswith("DistributedError"), message
    assert "rank 0 of 2" in message
    if how == "raise":
        assert "rank 1 failed: ValueError: bad batch on purpose" in message
    # bounded by the group's 8 s timeout, plus start-up of the steps before it
    assert float(elapsed) < 40.0, message


def test_single_process_mode_is_the_plain_step():
    assert not dist.is_initialized()
    assert (dist.rank(), dist.world_size(), dist.is_main(), dist.local_rank()) == (0, 1, True, 0)
    dist.init()  # no launcher environment: stays single-process
    assert not dist.is_initialized()
    model, params, x, y = W.problem()
    opt = fdl.optim.adam(lr=0.01)
    keys = fdl.random.split(fdl.random.key(1), W.BATCH)
    batch = (x[: W.BATCH], y[: W.BATCH], keys)
    plain = fdl.train.make_train_step(W.loss_fn_for(model), opt, compile=False)
    data_parallel = dist.make_train_step(W.loss_fn_for(model), opt, compile=False)
    a = plain(params, opt.init(params), *batch)
    b = data_parallel(params, opt.init(params), *batch)
    assert fdl.tree.allclose(a, b, rtol=0, atol=0)


def test_collectives_keep_the_tree_and_leave_inputs_alone():
    tree = {"a": torch.ones(3), "b": [torch.zeros(2, 2, dtype=torch.float64), torch.arange(4)]}
    before = fdl.tree.map(torch.clone, tree)
    for fn in (dist.broadcast, dist.all_reduce_mean, dist.all_reduce_sum):
        out = fn(tree)
        assert fdl.tree.structure(out) == fdl.tree.structure(tree)
        assert all(
            o.dtype == t.dtype and o.shape == t.shape and o.data_ptr() != t.data_ptr()
            for o, t in zip(fdl.tree.leaves(out), fdl.tree.leaves(tree), strict=True)
        )
    assert fdl.tree.allclose(tree, before, rtol=0, atol=0)


def test_buckets_group_by_size_and_dtype():
    f32 = [torch.zeros(256) for _ in range(4)]  # 1 KiB each
    mixed = [*f32[:2], torch.zeros(256, dtype=torch.float64), *f32[2:]]
    mb = 2.5 / 1024  # 2.5 KiB: two float32 leaves per bucket
    assert dist._buckets(f32, mb) == [[0, 1], [2, 3]]
    assert dist._buckets(mixed, mb) == [[0, 1], [2], [3, 4]]
    with pytest.raises(ValueError, match="bucket_mb must be > 0"):
        dist._buckets(f32, 0)


def test_shard_rejects_uneven_batches(monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 1)
    assert dist.shard(torch.arange(4))[0].tolist() == [2, 3]
    with pytest.raises(ValueError, match="3 rows, not a multiple of the world size 2"):
        dist.shard(torch.arange(3))
    with pytest.raises(ValueError, match="global batch_size 3 must be a multiple"):
        next(dist.shard_batches(torch.arange(8), batch_size=3))
    got = [b[0].tolist() for b in dist.shard_batches(torch.arange(6), batch_size=4, pad=True)]
    assert got == [[2, 3], [4, 4]]  # the padded final batch: rank 1 holds only padding


def test_torchrun_launches_the_example(tmp_path):
    pytest.importorskip("torch.distributed.run")
    if not (Path(fdl.data.data_root()[0]) / "MNIST" / "raw").is_dir():
        pytest.skip("no MNIST copy")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_port", str(_free_port()),
        str(ROOT / "examples" / "ddp_mnist.py"),
        "--epochs", "1", "--limit", "1024", "--no-compile", "--out", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "ddp_mnist.safetensors").is_file()
    assert "test accuracy" in run.stdout


def test_dp_sgd_on_ranks_equals_one_process_and_adds_the_noise_once(tmp_path):
    model, params, x, y = W.problem()
    opt = fdl.optim.sgd(lr=0.5, momentum=0.5)
    single = fdl.privacy.make_dp_train_step(W.dp_loss_for(model), opt, **W.DP)
    expected = W.dp_steps(single, params, opt.init(params), x, y)
    assert launch(W.dp_equivalence, 2, str(tmp_path)) == [0, 0]
    got = [fdl.checkpoint.load(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    assert bool(got[0]["identical"]) and bool(got[1]["identical"])
    for s, p in enumerate(expected):
        for k, v in fdl.tree.to_flat_dict(p).items():
            torch.testing.assert_close(got[0][f"step{s}.{k}"], v, rtol=1e-12, atol=1e-12)
    # noise once: params moved by sigma*C*z/B_e once; twice the noise would miss by ~|z|
    no_noise = fdl.privacy.make_dp_train_step(
        W.dp_loss_for(model), opt, **{**W.DP, "noise_multiplier": 0.0}
    )
    quiet = W.dp_steps(no_noise, params, opt.init(params), x, y)
    assert not fdl.tree.allclose(quiet[0], expected[0], rtol=0, atol=1e-3)
