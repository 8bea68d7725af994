"""The compiled DP-SGD step with the per-sample rules against the same step with ``vmap``.

Workload: the document's MNIST CNN (``benchmarks/per_sample.py``'s model), random
images, batch 256, one full ``fdl.privacy.make_dp_train_step(compile=True)`` step
with Adam (lr 1e-3), ``C = 1``, ``σ = 1``, a fresh key per step. Peers:
``method="rules"`` (the rules, traced by Dynamo) and ``method="vmap"`` (what
``"auto"`` compiles).

Times are process CPU seconds with one torch thread, the two peers interleaved
call by call, medians; peak memory is the growth of a fresh subprocess's peak
resident set over two steps (:func:`benchmarks._harness.peak_mem_child`).

Run: ``python -m benchmarks.dp_compiled [--batch 256] [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import fdl
from benchmarks._harness import peak_mem_child
from benchmarks.per_sample import _fdl_model

PEERS = {"rules": "rules", "vmap": "vmap"}


def make_step(method: str, batch: int) -> Callable[[int], Any]:
    """``run(i)``: one compiled DP step on a fixed batch with the ``i``-th key."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    model = _fdl_model()
    params = model.init(fdl.random.key(0))
    opt = fdl.optim.adam(lr=1e-3)
    state = opt.init(params)

    def loss_fn(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fdl.losses.nll_loss(model.apply(p, x), y)

    step = fdl.privacy.make_dp_train_step(
        loss_fn, opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch,
        method=method, compile=True,
    )  # fmt: skip
    return lambda i: step(params, state, fdl.random.key(i), x, y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--mem", choices=list(PEERS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.mem:
        run = make_step(PEERS[args.mem], args.batch)
        print(json.dumps({"peak_mb": peak_mem_child(lambda: run(0))}))
        return
    runs, compile_s = {}, {}
    for name, method in PEERS.items():
        runs[name] = make_step(method, args.batch)
        t = time.perf_counter()
        runs[name](0)
        compile_s[name] = time.perf_counter() - t
    times: dict[str, list[float]] = {name: [] for name in PEERS}
    for i in range(args.repeats):
        for name, run in runs.items():
            t = time.process_time()
            run(i + 1)
            times[name].append(time.process_time() - t)
    mem = {}
    for name in PEERS:
        cmd = [sys.executable, "-m", "benchmarks.dp_compiled", "--mem", name]
        out = subprocess.run(cmd + ["--batch", str(args.batch)], capture_output=True, text=True)
        mem[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
    for name in PEERS:
        ms = [1e3 * t for t in times[name]]
        print(
            f"{name}: median {statistics.median(ms):.1f} ms (min {min(ms):.1f}, max "
            f"{max(ms):.1f}), first call {compile_s[name]:.0f} s, peak {mem[name]:.0f} MB"
        )


if __name__ == "__main__":
    main()
