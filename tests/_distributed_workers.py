"""Worker functions for tests/test_distributed.py, run in spawned gloo processes.

Each worker joins a process group through the same environment variables
``torchrun`` sets, calls :func:`fdl.distributed.init`, and writes what it saw to
``out_dir/rank{r}.safetensors`` for the parent test to compare.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

import fdl
from fdl import distributed as dist

DIM, HIDDEN, CLASSES, BATCH, STEPS = 6, 8, 3, 8, 5


def setup(rank: int, world: int, port: int, timeout: float = 30.0) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":  # as conftest.py does
        import torch._inductor.config as inductor_config

        inductor_config.cpp.simdlen = 1
    dist.init(timeout=timeout)


def problem(dtype: torch.dtype = torch.float64) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    """A small MLP with dropout and a fixed global data set, the same on every rank."""
    model = fdl.nn.Sequential(
        fdl.nn.Linear(DIM, HIDDEN, dtype=dtype),
        fdl.nn.Tanh(),
        fdl.nn.Dropout(0.25),
        fdl.nn.Linear(HIDDEN, CLASSES, dtype=dtype),
    )
    kp, kx, ky = fdl.random.split(fdl.random.key(7), 3)
    params = model.init(kp)
    x = fdl.random.normal(kx, (BATCH * STEPS, DIM), dtype=dtype)
    y = fdl.random.randint(ky, (BATCH * STEPS,), 0, CLASSES)
    return model, params, x, y


def loss_fn_for(model: Any) -> Any:
    """Mean cross-entropy with dropout drawn from one key per example.

    Per-example keys make the dropout masks independent of how the batch is
    sharded, so W ranks on B/W rows see the same masks as one process on B rows.
    """

    def one(params: Any, x: torch.Tensor, y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        logits = model.apply(params, x[None], key=k, train=True)
        return fdl.losses.cross_entropy(logits, y[None])

    def loss_fn(params: Any, x: torch.Tensor, y: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(one, in_dims=(None, 0, 0, 0))(params, x, y, keys).mean()

    return loss_fn


def optimizers() -> dict[str, Any]:
    return {"sgd": fdl.optim.sgd(lr=0.1, momentum=0.9), "adam": fdl.optim.adam(lr=0.01)}


def run_steps(
    step: Any, params: Any, opt_state: Any, x: torch.Tensor, y: torch.Tensor, first: int, last: int
) -> tuple[Any, Any, list[torch.Tensor], list[Any]]:
    """Steps ``first..last-1`` on global batch ``s``, sharded to this rank; keys per example."""
    losses, history = [], []
    for s in range(first, last):
        keys = fdl.random.split(fdl.random.fold_in(fdl.random.key(3), s), BATCH)
        gx, gy = x[s * BATCH : (s + 1) * BATCH], y[s * BATCH : (s + 1) * BATCH]
        lx, ly, lk = dist.shard(gx, gy, keys)
        params, opt_state, loss = step(params, opt_state, lx, ly, lk)
        losses.append(loss)
        history.append(params)
    return params, opt_state, losses, history


def gathered_equal(params: Any) -> bool:
    """Whether every rank holds bit-identical params (all-gather and compare bits)."""
    flat = torch.cat([t.reshape(-1) for t in fdl.tree.leaves(params)])
    parts = [torch.empty_like(flat) for _ in range(dist.world_size())]
    torch.distributed.all_gather(parts, flat)
    return all(torch.equal(parts[0], p) for p in parts)


def equivalence(
    rank: int, world: int, port: int, out_dir: str, compile: bool, names: tuple[str, ...]
) -> None:
    setup(rank, world, port)
    model, params, x, y = problem()
    params = dist.broadcast(params)
    results: dict[str, torch.Tensor] = {}
    for name in names:
        opt = optimizers()[name]
        step = dist.make_train_step(loss_fn_for(model), opt, compile=compile)
        _, _, losses, history = run_steps(step, params, opt.init(params), x, y, 0, STEPS)
        for s, p in enumerate(history):
            identical = gathered_equal(p)  # checked after every step
            results[f"{name}.identical.{s}"] = torch.tensor(identical)
            for k, v in fdl.tree.to_flat_dict(p).items():
                results[f"{name}.step{s}.{k}"] = v
        results[f"{name}.losses"] = torch.stack(losses)
    fdl.checkpoint.save(Path(out_dir) / f"rank{rank}.safetensors", results)
    dist.shutdown()


def resume(rank: int, world: int, port: int, out_dir: str, ckpt: str, first: int) -> None:
    """Train steps ``first..STEPS`` from a checkpoint written by rank 0 of another run."""
    setup(rank, world, port)
    model, params, x, y = problem()
    opt = optimizers()["adam"]
    step = dist.make_train_step(loss_fn_for(model), opt, compile=False)
    if first == 0:
        params, opt_state, _, _ = run_steps(step, params, opt.init(params), x, y, 0, 2)
        if dist.is_main():
            fdl.checkpoint.save(ckpt, {"params": params, "opt_state": opt_state})
        dist.barrier()
    else:
        state = fdl.checkpoint.load(ckpt, like={"params": params, "opt_state": opt.init(params)})
        params, opt_state = state["params"], state["opt_state"]
        params, opt_state, _, _ = run_steps(step, params, opt_state, x, y, first, STEPS)
        fdl.checkpoint.save(
            Path(out_dir) / f"rank{rank}.safetensors", fdl.tree.to_flat_dict(params)
        )
    dist.shutdown()


def failing(rank: int, world: int, port: int, out_dir: str, how: str) -> None:
    """Rank 1 raises (or is killed) at step 2; the others must fail fast, naming it."""
    setup(rank, world, port, timeout=8.0)
    model, params, x, y = problem()
    opt = optimizers()["sgd"]
    inner = dist.make_train_step(loss_fn_for(model), opt, compile=False)
    state = {"n": 0}

    def step(*args: Any) -> Any:
        state["n"] += 1
        if rank == 1 and state["n"] == 3:
            if how == "kill":
                os._exit(17)
            if how == "hang":
                time.sleep(60)
            with dist.guard():
                raise ValueError("bad batch on purpose")
        return inner(*args)

    start = time.monotonic()
    try:
        run_steps(step, params, opt.init(params), x, y, 0, STEPS)
        message = "no error"
    except Exception as e:  # what the surviving ranks saw
        message = f"{type(e).__name__}: {e}"
    elapsed = time.monotonic() - start
    Path(out_dir, f"rank{rank}.txt").write_text(f"{elapsed:.3f}\n{message}")
    if rank == 1:
        raise SystemExit(1)


def dp_loss_for(model: Any) -> Any:
    def loss_fn(params: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fdl.losses.cross_entropy(model.apply(params, x), y)

    return loss_fn


DP = {"noise_multiplier": 1.1, "max_grad_norm": 0.5, "expected_batch_size": float(BATCH)}


def dp_steps(step: Any, params: Any, opt_state: Any, x: Any, y: Any) -> list[Any]:
    """DP steps on global batch ``s`` sharded to this rank, a Poisson-like mask, a shared key."""
    history = []
    for s in range(STEPS):
        key = fdl.random.fold_in(fdl.random.key(11), s)
        mask = (torch.arange(BATCH) % 3 != s % 3).to(torch.float64)  # some rows masked out
        gx, gy = x[s * BATCH : (s + 1) * BATCH], y[s * BATCH : (s + 1) * BATCH]
        lx, ly, lm = dist.shard(gx, gy, mask)
        params, opt_state, _ = step(params, opt_state, key, lx, ly, mask=lm)
        history.append(params)
    return history


def dp_equivalence(rank: int, world: int, port: int, out_dir: str) -> None:
    setup(rank, world, port)
    model, params, x, y = problem()
    opt = fdl.optim.sgd(lr=0.5, momentum=0.5)
    step = dist.make_dp_train_step(dp_loss_for(model), opt, **DP)
    history = dp_steps(step, params, opt.init(params), x, y)
    results = {f"step{s}.{k}": v for s, p in enumerate(history) for k, v in
               fdl.tree.to_flat_dict(p).items()}  # fmt: skip
    results["identical"] = torch.tensor(gathered_equal(history[-1]))
    fdl.checkpoint.save(Path(out_dir) / f"rank{rank}.safetensors", results)
    dist.shutdown()
