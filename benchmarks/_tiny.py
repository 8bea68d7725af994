"""A tiny workload used by the harness's own test (hidden from the report: leading underscore)."""

from __future__ import annotations

import torch

from benchmarks._flops import count_flops
from benchmarks._harness import Result, measure, result

_N = 32


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(_N, _N, generator=g), torch.randn(_N, _N, generator=g)


def run(quick: bool = False) -> list[Result]:
    a, b = _inputs()
    reps = 3 if quick else 10
    fdl_t = measure(lambda: a @ b, warmup=1, repeats=reps)
    ref_t = measure(lambda: torch.mm(a, b), warmup=1, repeats=reps)
    return [
        result(
            "tiny matmul",
            "fdl",
            fdl_t,
            extra={"targets": [{"text": "≤ 100× torch.mm", "vs": "torch.mm", "max_ratio": 100.0}]},
        ),
        result("tiny matmul", "torch.mm", ref_t),
    ]


def flops(quick: bool = False) -> dict[str, int]:
    a, b = _inputs()
    return {"tiny matmul": count_flops(lambda: a @ b)}
