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


def _threefry_traced(
    k0: torch.Tensor, k1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same 20-round cipher in out-of-place ops, for tracing into the graph."""
    mask = 0xFFFFFFFF
    ks = (k0, k1, k0 ^ k1 ^ R._PARITY)
    x0, x1 = (x0 + k0) & mask, (x1 + k1) & mask
    for block in range(5):
        for r in R._ROTATIONS[block % 2]:
            x0 = (x0 + x1) & mask
            x1 = (((x1 << r) | (x1 >> (32 - r))) & mask) ^ x0
        x0 = (x0 + ks[(block + 1) % 3]) & mask
        x1 = (x1 + ks[(block + 2) % 3] + (block + 1)) & mask
    return x0, x1


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
    """Cold compile seconds and per-call milliseconds for each peer.

    Runs on one thread (restored afterwards): the step's tensors are small, and
    on a busy machine intra-op threads mostly wait for each other.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool) -> list[Result]:
    k, x = R.key(0), torch.randn(64, 128)
    repeats = 5 if quick else 15
    # one throwaway compilation first: imports and compiler warm-up are paid
    # once per process and would otherwise land on the first peer
    _cold_compile(lambda k, x: x * 2.0, k, x)
    peers: list[tuple[str, Callable]] = [
        ("fdl", _fdl_step),
        ("torch global RNG", _torch_step),
        ("no sampling", _no_sampling),
    ]
    if not quick:
        peers.append(("fdl, cipher inlined", _fdl_step))
    workload = "sampling step (64, 128): split + bernoulli + normal"
    eager = measure(lambda: _fdl_step(k, x), repeats=repeats, number=20)
    out = [result(workload, "fdl eager", eager, note=threads_note())]
    for name, fn in peers:
        inline = name == "fdl, cipher inlined"
        original = R._threefry2x32_op
        if inline:
            R._threefry2x32_op = _threefry_traced  # trace the cipher op by op
        try:
            compiled, seconds = _cold_compile(fn, k, x)
            t = measure(lambda c=compiled: c(k, x), repeats=repeats, number=20)
            same = torch.equal(compiled(k, x), fn(k, x)) if fn is _fdl_step else None
        finally:
            R._threefry2x32_op = original
        note = threads_note() + ("" if same is None else f"; equal to eager: {same}")
        out.append(result(workload, name, t, compile_s=seconds, note=note))
    return out


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
    print(threads_note())
