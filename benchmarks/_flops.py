"""FLOP counts of workloads, and the time they imply at the CPU's peak rate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of matmuls and convolutions executed by one call of ``fn`` (forward and backward).

    Elementwise ops are not counted: for the models here they are a few percent of the total.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def floor_seconds(flops: int, peak_gflops: float) -> float:
    """The time ``flops`` take at ``peak_gflops``: a physical lower bound on the step time."""
    return flops / (peak_gflops * 1e9)
