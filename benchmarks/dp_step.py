"""The DP-SGD training step against Opacus (hooks and ghost clipping), batch 64 to 1024.

Workload: the document's MNIST CNN (``benchmarks/per_sample.py``'s model), random
images, one full training step with Adam (lr 1e-3): forward, per-example
clipping at ``C = 1``, Gaussian noise with ``σ = 1``, update. Peers:

* ``fdl dp step``: ``fdl.privacy.make_dp_train_step`` (eager: the per-layer rules
  path; per-example norms and the clipped weighted sum from the layer's own factors,
  without per-example gradients of the linear layers).
* ``opacus hooks``: ``PrivacyEngine.make_private(..., grad_sample_mode="hooks")``.
* ``opacus ghost``: ``make_private(..., grad_sample_mode="ghost")`` (fast gradient
  clipping, the criterion wrapped by Opacus: two backward passes).
* ``non-private fdl``: ``fdl.train.make_train_step`` (eager).
* ``non-private torch``: ``nn.Module`` + ``torch.optim.Adam``.

Times are process CPU seconds with one torch thread (as in ``per_sample``); peak
memory is the growth of a fresh subprocess's peak resident set over two steps,
under glibc's default allocator policy.

Run: ``python -m benchmarks.dp_step`` (``--quick``: batch 64 only).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch

import fdl
from benchmarks._harness import (
    Result,
    format_table,
    peak_mem,
    peak_mem_child,
    result,
    threads_note,
)
from benchmarks.per_sample import _fdl_model, _torch_model, measure_cpu

PEERS = [
    "fdl dp step",
    "opacus hooks",
    "opacus ghost",
    "non-private fdl",
    "non-private torch",
]
SIGMA, CLIP = 1.0, 1.0

_TARGETS = {
    "fdl dp step": [
        {"text": "≤ 1.3× the non-private fdl step", "vs": "non-private fdl", "max_ratio": 1.3},
        {"text": "≥ 1.5× faster than Opacus ghost", "vs": "opacus ghost", "max_ratio": 1 / 1.5},
    ],
}


def _opacus(batch: int, x: torch.Tensor, y: torch.Tensor, mode: str) -> Callable[[], Any]:
    import warnings

    from opacus import PrivacyEngine

    warnings.filterwarnings("ignore", module="opacus")
    net = _torch_model()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    engine = PrivacyEngine(accountant="rdp")
    made = engine.make_private(
        module=net,
        optimizer=opt,
        data_loader=loader,
        criterion=torch.nn.NLLLoss(),
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        poisson_sampling=False,
        grad_sample_mode=mode,
    )
    if mode == "ghost":
        model, dp_opt, criterion, _ = made
    else:
        (model, dp_opt, _), criterion = made, torch.nn.NLLLoss()

    def step() -> None:
        dp_opt.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        dp_opt.step()

    return step


def _make(peer: str, batch: int) -> Callable[[], Any]:
    """The zero-argument step timed for ``peer`` at ``batch``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    if peer.startswith("opacus"):
        return _opacus(batch, x, y, peer.split()[1])
    if peer == "non-private torch":
        net = _torch_model()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def torch_step() -> None:
            opt.zero_grad()
            torch.nn.functional.nll_loss(net(x), y).backward()
            opt.step()

        return torch_step
    model = _fdl_model()
    params = model.init(fdl.random.key(0))

    def loss_fn(p: Any, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return fdl.losses.nll_loss(model.apply(p, xb), yb)

    opt = fdl.optim.adam(lr=1e-3)
    carry = {"params": params, "state": opt.init(params)}
    if peer == "non-private fdl":
        step = fdl.train.make_train_step(loss_fn, opt, compile=False)

        def fdl_step() -> None:
            carry["params"], carry["state"], _ = step(carry["params"], carry["state"], x, y)

        return fdl_step
    dp = fdl.privacy.make_dp_train_step(
        loss_fn,
        opt,
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        expected_batch_size=batch,
    )
    keys = {"key": fdl.random.key(1)}
    mask = torch.ones(batch, dtype=torch.bool)

    def dp_step() -> None:
        keys["key"], sub = fdl.random.split(keys["key"])
        carry["params"], carry["state"], _ = dp(
            carry["params"], carry["state"], sub, x, y, mask=mask
        )

    return dp_step


def run(quick: bool = False, memory: bool = True) -> list[Result]:
    """Time every peer at batch 64, 256 and 1024 (64 only if ``quick``), one thread, CPU time."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    results: list[Result] = []
    for batch in (64,) if quick else (64, 256, 1024):
        workload = f"document CNN, DP-SGD train step, batch {batch}"
        fns = {peer: _make(peer, batch) for peer in PEERS}
        repeats = 2 if quick else (3 if batch >= 1024 else 5)
        timings = {peer: measure_cpu(fn, warmup=2, repeats=repeats) for peer, fn in fns.items()}
        for peer in PEERS:
            mem = peak_mem("benchmarks.dp_step", peer, batch) if memory else None
            note = f"peak RSS +{mem:.0f} MB" if mem is not None else ""
            extra = {"targets": _TARGETS.get(peer, [])}
            results.append(
                result(workload, peer, timings[peer], peak_mem_mb=mem, note=note, extra=extra)
            )
    return results


def _mem_child(peer: str, batch: int) -> float:
    return peak_mem_child(_make(peer, batch))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--mem", nargs=2, metavar=("PEER", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem:
        print(json.dumps({"peak_mb": _mem_child(args.mem[0], int(args.mem[1]))}))
    else:
        res = run(quick=args.quick, memory=not args.no_memory)
        print(format_table(res, baseline_peer="fdl dp step"))
        print(threads_note())
