"""Argument checks of differential privacy: one rule per argument, one message.

Shared by :mod:`fdl.privacy` (DP-SGD and the accountant) and :mod:`fdl.distributed`
(whose data-parallel DP-SGD step takes the same arguments).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from fdl import _eager
from fdl import tree as _tree

__all__ = [
    "check_bounds_fit",
    "check_clip",
    "check_clip_bounds",
    "check_delta",
    "check_dp_args",
    "check_dp_options",
    "check_expected",
    "check_mask",
    "check_method",
    "check_micro_batch_size",
    "check_noise",
    "check_not_accumulating",
    "check_number",
    "check_rate",
    "clip_norm",
    "reject_accumulation",
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


def check_micro_batch_size(micro_batch_size: int | None) -> int | None:
    """``None`` or a positive ``int``, else ``ValueError``."""
    if micro_batch_size is None:
        return None
    if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, int):
        raise ValueError(
            f"micro_batch_size must be a positive int or None, got {micro_batch_size!r}"
        )
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be a positive int or None, got {micro_batch_size}")
    return micro_batch_size


# --------------------------------------------------------------------------- clipping bounds


def check_clip_bounds(max_grad_norm: Any) -> Any:
    """One bound ``C`` (a float), or per-parameter bounds ``C_l`` (a pytree of floats).

    A number is flat clipping; a pytree (the structure of the params, or a flat
    list/tuple with one entry per params leaf) is per-layer clipping. Every bound
    must be a positive finite number; the error names the offending leaf.
    """
    if isinstance(max_grad_norm, (int, float)) or getattr(max_grad_norm, "ndim", None) == 0:
        return check_clip(max_grad_norm)
    paths, leaves, treedef = _tree.flatten_with_paths(max_grad_norm)
    if not leaves:
        raise ValueError(
            f"max_grad_norm must be a number or a pytree of numbers, got {max_grad_norm!r}"
        )
    checked = [
        check_number(f"max_grad_norm[{path!r}]", c, "a positive finite number", _positive)
        for path, c in zip(paths, leaves, strict=True)
    ]
    return _tree.unflatten(treedef, checked)


def _positive(c: float) -> bool:
    return 0.0 < c < math.inf


def clip_norm(bounds: Any) -> float:
    """``‖(C_l)‖₂``, the sensitivity of a sum of per-layer clipped gradients (``C`` if flat)."""
    if isinstance(bounds, float):
        return bounds
    return math.sqrt(sum(c * c for c in _tree.leaves(bounds)))


def check_bounds_fit(bounds: Any, params: Any, who: str) -> None:
    """``ValueError`` unless per-layer ``bounds`` give one bound per params leaf.

    A flat list/tuple of numbers is taken in the params' flattening order
    (``fdl.tree.paths(params)``); any other pytree must have the params' structure.
    """
    sequence = isinstance(bounds, (list, tuple)) and all(
        not isinstance(c, (list, tuple, dict)) for c in bounds
    )
    if not sequence:
        _tree.check_match(
            bounds, params, got_name="max_grad_norm", expected_name="the params", context=who
        )
        return
    n = len(_tree.leaves(params))
    if len(bounds) != n:
        raise ValueError(
            f"{who}: max_grad_norm has {len(bounds)} per-layer bounds, the params have {n} "
            f"leaves ({', '.join(_tree.paths(params))})"
        )


# --------------------------------------------------------------------------- the DP step


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
    noise_multiplier: float, max_grad_norm: Any, expected_batch_size: float, method: str
) -> tuple[float, Any, float]:
    """``(sigma, C, B_e)`` after checking DP-SGD's arguments, ``method`` included.

    ``C`` is a float, or a pytree of floats for per-layer bounds (:func:`check_clip_bounds`).
    """
    sigma = check_noise(noise_multiplier)
    clip = check_clip_bounds(max_grad_norm)
    b_e = check_expected(expected_batch_size)
    check_method(method)
    return sigma, clip, b_e


# the keyword arguments of a DP-SGD step (``fdl.privacy.make_dp_train_step``), by name
DP_REQUIRED = ("noise_multiplier", "max_grad_norm", "expected_batch_size")
DP_DEFAULTS: dict[str, Any] = {"has_aux": False, "method": "auto", "micro_batch_size": None}


def check_dp_options(options: dict[str, Any], who: str) -> dict[str, Any]:
    """DP-SGD's keyword arguments, checked, with the defaults filled in.

    ``TypeError`` for a missing or unknown name (as Python's own for a call),
    ``ValueError`` for a bad value.
    """
    unknown = sorted(set(options) - set(DP_REQUIRED) - set(DP_DEFAULTS))
    if unknown:
        raise TypeError(f"{who}() got an unexpected keyword argument {unknown[0]!r}")
    missing = [name for name in DP_REQUIRED if name not in options]
    if missing:
        raise TypeError(f"{who}() missing required keyword argument {missing[0]!r}")
    out = {**DP_DEFAULTS, **options}
    check_dp_args(
        out["noise_multiplier"], out["max_grad_norm"], out["expected_batch_size"], out["method"]
    )
    check_micro_batch_size(out["micro_batch_size"])
    return out


def _accumulates(node: Any) -> bool:
    from fdl.optim import MultiSteps, MultiStepsState

    if isinstance(node, (MultiSteps, MultiStepsState)):
        return True
    if isinstance(node, dict):
        return any(_accumulates(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_accumulates(v) for v in node)
    return False


_ACCUMULATION = (
    "{who}: the optimizer accumulates gradients (fdl.optim.multi_steps / MultiSteps): every "
    "call of a DP-SGD step is one noised release, so accumulating them would add noise per "
    "micro-batch, and the accountant would have to count micro-steps. For one noised step "
    "over a logical batch larger than memory, pass micro_batch_size= to the step (virtual "
    "steps) and a plain optimizer."
)


def check_not_accumulating(optimizer_or_state: Any, who: str) -> None:
    """``ValueError`` if it is or holds ``fdl.optim.MultiSteps`` or a ``MultiStepsState``."""
    if _accumulates(optimizer_or_state):
        raise ValueError(_ACCUMULATION.format(who=who))


def reject_accumulation(step: Callable[..., Any], who: str) -> Callable[..., Any]:
    """``step`` that first checks its ``opt_state`` with :func:`check_not_accumulating`.

    Each call of a DP-SGD step adds noise once; accumulating its outputs over k
    calls would noise every micro-batch. A ``chain`` holding ``multi_steps`` is
    seen only in its state, so the state is checked on every eager call.
    """

    def checked(params: Any, opt_state: Any, *inputs: Any, **options: Any) -> Any:
        if _eager.validating():
            check_not_accumulating(opt_state, who)
        return step(params, opt_state, *inputs, **options)

    return checked
