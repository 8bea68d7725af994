"""Argument checks shared by DP-SGD and the accountant: one rule per argument, one message."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["check_clip", "check_delta", "check_expected", "check_number", "check_rate"]


def check_number(name: str, value: float, what: str, ok: Callable[[float], bool]) -> float:
    """``float(value)`` when ``ok`` holds for it, else ``ValueError("<name> must be <what>")``."""
    x = float(value)
    if not ok(x):
        raise ValueError(f"{name} must be {what}, got {value}")
    return x


def check_clip(max_grad_norm: float) -> float:
    return check_number(
        "max_grad_norm", max_grad_norm, "a positive finite number", lambda c: 0.0 < c < math.inf
    )


def check_expected(expected_batch_size: float) -> float:
    return check_number(
        "expected_batch_size", expected_batch_size, "> 0", lambda b: 0.0 < b < math.inf
    )


def check_rate(sample_rate: float) -> float:
    return check_number("sample_rate", sample_rate, "in (0, 1]", lambda q: 0.0 < q <= 1.0)


def check_delta(delta: float) -> float:
    return check_number("delta", delta, "in (0, 1)", lambda d: 0.0 < d < 1.0)
