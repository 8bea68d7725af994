"""Adam update on a 100-tensor, 10M-parameter pytree: fdl vs torch.optim, side by side.

Workloads (each row is one full optimizer step: new params and state from grads):

* eager: fdl's ``opt.update`` + ``apply_updates`` (``torch._foreach_*`` path)
  vs ``torch.optim.Adam(foreach=True).step()`` (target: fdl <= 1.5x);
* compiled: ``fdl.optim.make_update(opt)`` (``torch.compile``, pure: fresh
  buffers every step) and ``make_update(opt, donate=True)`` (buffer donation,
  in place) vs ``torch.optim.Adam(fused=True).step()`` (target: fdl <= 1.2x).

Run: ``python -m benchmarks.optim_update`` (``--quick`` for 1M parameters,
``--threads N`` to set torch's thread count, ``--cuda`` on a GPU).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import fdl
from benchmarks import _workloads as W
from benchmarks._harness import Result, Timing, format_table, result, threads_note, time_first_call

N_TENSORS = 100


def _tree(total: int, device: str) -> dict[str, torch.Tensor]:
    per = total // N_TENSORS
    g = torch.Generator().manual_seed(0)
    return {
        f"layer{i:03d}": torch.randn(per // 100, 100, generator=g).to(device)
        for i in range(N_TENSORS)
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _interleaved(fns: dict[str, Callable[[], None]], *, warmup: int, repeats: int) -> dict:
    """Time several peers round-robin (one call each per round), so that load changes on
    a shared machine hit every peer alike; returns a Timing per peer."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: Timing(v) for k, v in times.items()}


def _torch_step(params: dict, grads: dict, device: str, **kw: bool) -> Callable[[], None]:
    tp = [p.clone().requires_grad_() for p in params.values()]
    for p, g in zip(tp, grads.values(), strict=True):
        p.grad = g.clone()
    topt = torch.optim.Adam(tp, lr=1e-3, **kw)

    def step() -> None:
        topt.step()
        _sync(device)

    return step


def run(quick: bool = False, device: str = "cpu") -> list[Result]:
    total = W.adam_total(quick)
    repeats = 7 if quick else 15
    params = _tree(total, device)
    grads = fdl.tree.map(lambda p: torch.randn_like(p) * 1e-2, params)
    n = fdl.tree.size(params)
    opt = fdl.optim.adam(lr=1e-3)

    # eager: fdl update + apply_updates vs torch.optim.Adam.step()
    box: dict[str, Any] = {"p": fdl.tree.map(torch.clone, params)}
    box["s"] = opt.init(box["p"])

    def fdl_eager() -> None:
        u, box["s"] = opt.update(grads, box["s"], box["p"])
        box["p"] = fdl.optim.apply_updates(box["p"], u)
        _sync(device)

    eager = _interleaved(
        {
            "fdl": fdl_eager,
            "torch foreach": _torch_step(params, grads, device, foreach=True),
            "torch for-loop": _torch_step(params, grads, device, foreach=False),
        },
        warmup=3,
        repeats=repeats,
    )
    eager_targets = {
        "fdl": [{"text": "≤ 1.5× torch foreach", "vs": "torch foreach", "max_ratio": 1.5}]
    }
    results = [
        result(W.adam("eager", n, device), k, t, extra={"targets": eager_targets.get(k, [])})
        for k, t in eager.items()
    ]

    # compiled: make_update (pure, and with donation) vs torch fused
    fns: dict[str, Callable[[], None]] = {}
    compile_s: dict[str, float] = {}
    for peer, donate in (("fdl", False), ("fdl donate", True)):
        step_fn = fdl.optim.make_update(opt, donate=donate)
        cbox: dict[str, Any] = {"p": fdl.tree.map(torch.clone, params)}
        cbox["s"] = opt.init(cbox["p"])

        def fdl_compiled(step_fn: Any = step_fn, cbox: dict = cbox) -> None:
            cbox["p"], cbox["s"] = step_fn(grads, cbox["s"], cbox["p"])
            _sync(device)

        compile_s[peer] = time_first_call(fdl_compiled)
        fns[peer] = fdl_compiled
    fns["torch fused"] = _torch_step(params, grads, device, fused=True)
    fns["torch foreach"] = _torch_step(params, grads, device, foreach=True)
    compiled = _interleaved(fns, warmup=3, repeats=repeats)
    fused_target = [{"text": "≤ 1.2× torch fused", "vs": "torch fused", "max_ratio": 1.2}]
    results += [
        result(
            W.adam("compiled", n, device),
            k,
            t,
            compile_s=compile_s.get(k),
            extra={"targets": fused_target if k.startswith("fdl") else []},
        )
        for k, t in compiled.items()
    ]
    return results


# Adam's arithmetic per parameter: m (3), v (4), bias corrections folded into two scalars,
# sqrt, add eps, divide, scale by lr, add to the parameter (5): about 12 FLOPs. The update is
# memory-bound (it reads p, g, m, v and writes p, m, v: 28 bytes per float32 parameter), so
# this FLOP floor is far below any measured time; the bandwidth bound is the real one.
_ADAM_FLOPS_PER_PARAM = 12


def flops(quick: bool = False) -> dict[str, int]:
    """Elementwise FLOPs of one Adam update of the benchmark's tree."""
    total = W.adam_total(quick)
    per = total // N_TENSORS * N_TENSORS
    return {W.adam(kind, per): _ADAM_FLOPS_PER_PARAM * per for kind in ("eager", "compiled")}


def ratios(results: list[Result]) -> str:
    """The target ratios: fdl time / torch time."""
    by = {(r.workload.split(",")[0], r.peer): r.median_s for r in results}
    lines = []
    for wl, fdl_peer, ref, target in (
        ("adam eager", "fdl", "torch foreach", 1.5),
        ("adam compiled", "fdl", "torch fused", 1.2),
        ("adam compiled", "fdl donate", "torch fused", 1.2),
    ):
        if (wl, fdl_peer) in by and (wl, ref) in by:
            r = by[(wl, fdl_peer)] / by[(wl, ref)]
            lines.append(f"{wl}: {fdl_peer} / {ref} = {r:.2f}x (target <= {target}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    dev = "cuda" if "--cuda" in sys.argv else "cpu"
    if "--threads" in sys.argv:
        torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]))
    res = run(quick="--quick" in sys.argv, device=dev)
    print(format_table(res))
    print(ratios(res))
    print(threads_note())
