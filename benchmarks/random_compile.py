"""Compile time and run time of a small step that samples (dropout mask + noise).

The step: split a key, draw a Bernoulli(0.9) keep-mask and N(0, 1) noise of
shape (64, 128), return ``x * mask / 0.9 + 0.1 * noise``. Peers:

- ``fdl``: fdl.random as shipped (the Threefry cipher is the custom operator
  ``fdl::threefry2x32``, opaque to inductor), compiled and eager;
- ``fdl, cipher inlined``: the same 20-round cipher traced op by op into the
  graph (what inductor would otherwise compile; slow, skipped with --quick);
- ``torch global RNG``: ``torch.bernoulli`` / ``torch.randn`` (stateful; the
  reference for cost, not for semantics);
- ``no sampling``: ``x * 0.9 + 0.1``, the fixed cost of any compilation.

Compile times are cold: inductor's on-disk caches are switched off.

Run: ``python -m benchmarks.random_compile`` (``--quick`` skips the inlined peer).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

import fdl
from benchmarks._harness import Result, format_table, measure, result, threads_note, time_first_call

R = fdl.random


def _fdl_step(k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    k1, k2 = R.split(k)
    mask = R.bernoulli(k1, 0.9, x.shape)
    return x * mask / 0.9 + 0.1 * R.normal(k2, x.shape)


def _torch_step(k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    mask = torch.bernoulli(torch.full_like(x, 0.9))
    return x * mask / 0.9 + 0.1 * torch.randn_like(x)


def _no_sampling(k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x * 0.9 + 0.1


def _cold_compile(fn: Callable, *args: torch.Tensor) -> tuple[Callable, float]:
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    with (
        torch._inductor.config.patch(fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    ):
        seconds = time_first_call(lambda: compiled(*args))
    return compiled, seconds


def run(quick: bool = False) -> list[Result]:
    """Cold compile seconds and per-call milliseconds for each peer."""
    k, x = R.key(0), torch.randn(64, 128)
    repeats = 5 if quick else 15
    peers: list[tuple[str, Callable]] = [
        ("fdl", _fdl_step),
        ("torch global RNG", _torch_step),
        ("no sampling", _no_sampling),
    ]
    out = []
    workload = "sampling step (64, 128): split + bernoulli + normal"
    out.append(
        result(workload, "fdl eager", measure(lambda: _fdl_step(k, x), repeats=repeats, number=20))
    )
    for name, fn in peers:
        compiled, seconds = _cold_compile(fn, k, x)
        t = measure(lambda c=compiled: c(k, x), repeats=repeats, number=20)
        out.append(result(workload, name, t, compile_s=seconds, note=threads_note()))
    if not quick:
        original = R._threefry2x32_op
        R._threefry2x32_op = R._threefry2x32_impl  # trace the cipher op by op
        try:
            compiled, seconds = _cold_compile(_fdl_step, k, x)
            t = measure(lambda: compiled(k, x), repeats=repeats, number=20)
            same = torch.equal(compiled(k, x), _fdl_step(k, x))
        finally:
            R._threefry2x32_op = original
        out.append(
            result(
                workload,
                "fdl, cipher inlined",
                t,
                compile_s=seconds,
                note=f"{threads_note()}; equal to eager: {same}",
            )
        )
    return out


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
