"""Argument checks of differential privacy: one rule per argument, one message.

Shared by :mod:`fdl.privacy` (DP-SGD and the accountant) and :mod:`fdl.distributed`
(whose data-parallel DP-SGD step takes the same arguments).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "check_clip",
    "check_delta",
    "check_dp_args",
    "check_expected",
    "check_mask",
    "check_method",
    "check_noise",
    "check_number",
    "check_rate",
]


def check_number(name: str, value: float, what: str, ok: Callable[[float], bool]) -> float:
    """``float(value)`` when ``ok`` holds for it, else ``ValueError("<name> must be <what>")``."""
    x = float(value)
    if not ok(x):
        raise ValueError(f"{name} must be {what}, got {value}")
    return x


def check_noise(noise_multiplier: float) -> float:
    return check_number(
        "noise_multiplier", noise_multiplier, "a finite number >= 0", lambda s: 0.0 <= s < math.inf
    )


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


METHODS = ("auto", "rules", "vmap")


def check_method(method: str) -> str:
    """``method`` when it is one of :data:`METHODS`, else ValueError."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def check_mask(mask: torch.Tensor, num_examples: int) -> torch.Tensor:
    """``mask`` when it has one entry per example (shape ``(num_examples,)``), else ValueError."""
    if tuple(mask.shape) != (num_examples,):
        raise ValueError(
            f"mask must have shape ({num_examples},) (one entry per example), "
            f"got {tuple(mask.shape)}"
        )
    return mask


def check_dp_args(
    noise_multiplier: float, max_grad_norm: float, expected_batch_size: float, method: str
) -> tuple[float, float, float]:
    """``(sigma, C, B_e)`` as floats after checking DP-SGD's arguments, ``method`` included."""
    sigma = check_noise(noise_multiplier)
    clip = check_clip(max_grad_norm)
    b_e = check_expected(expected_batch_size)
    check_method(method)
    return sigma, clip, b_e
