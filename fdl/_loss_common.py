"""Reduction and argument checks shared by the loss modules (``fdl/_*_losses.py``, ``fdl/_ctc.py``).

``fdl.losses`` re-exports the losses; this module only holds the plumbing they share:
torch's ``reduction`` rules (including the deprecated ``size_average``/``reduce`` flags),
tensor-type checks, eager-only value checks, and the docstring lines every loss with
torch's ``reduction`` arguments has in common (:func:`fill_doc`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import torch

from fdl import _eager

Tensor = torch.Tensor

REDUCTIONS = ("none", "mean", "sum")


def reduction_of(
    name: str,
    reduction: str,
    size_average: bool | None = None,
    reduce: bool | None = None,
    *,
    allowed: tuple[str, ...] = REDUCTIONS,
    **tensors: object,
) -> str:
    """The reduction to use, honouring torch's deprecated ``size_average``/``reduce``.

    ``allowed`` lists the accepted names (``kl_div`` adds ``'batchmean'``). The loss's
    tensor arguments, given as ``tensors``, are checked first (:func:`check_tensors`).
    """
    check_tensors(name, **tensors)
    if size_average is not None or reduce is not None:
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        if not reduce:
            return "none"
        return "mean" if size_average else "sum"
    if reduction not in allowed:
        raise ValueError(
            f"{name}: reduction must be one of {', '.join(map(repr, allowed))}, got {reduction!r}"
        )
    return reduction


def reduce(loss: Tensor, reduction: str) -> Tensor:
    """``loss`` unchanged (``'none'``), its sum, or its mean over all elements."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean()


def check_tensors(name: str, **tensors: object) -> None:
    """``TypeError`` naming the argument if a given value is not a tensor."""
    for arg, value in tensors.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(value).__name__}")


def check_same_shape(name: str, **tensors: Tensor) -> None:
    """``ValueError`` listing every shape unless all the tensors have one shape."""
    shapes = {arg: tuple(t.shape) for arg, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{arg} {shape}" for arg, shape in shapes.items())
        raise ValueError(f"{name}: shapes must be equal, got {listed}")


def any_true(cond: Tensor) -> bool:
    """Whether any element of ``cond`` is true, where that is knowable without tracing.

    ``False`` (the check is skipped) inside ``torch.compile``, ``vmap`` and on the meta
    device, where values cannot be inspected.
    """
    if not _eager.validating():
        return False
    try:
        return bool(cond.any())
    except (RuntimeError, NotImplementedError):
        return False


# The docstring lines shared by the losses, by placeholder: a docstring line that is just
# ``{key}`` (or ``{key:arg}``, filling the part's ``{0}``) becomes the part, at that line's indent.
DOC_PARTS = {
    "reduction_args": """\
size_average: deprecated, see ``reduction``.
reduce: deprecated, see ``reduction``.
reduction: ``'none'`` | ``'mean'`` | ``'sum'``.""",
    "returns": """\
Returns:
    The reduced loss, or {0} losses for ``'none'``.""",
}
_DOC_DEFAULTS = {"returns": "per-element"}
_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)\{(?P<key>\w+)(?::(?P<arg>[^}\n]*))?\}[ \t]*$", re.M)

_F = TypeVar("_F", bound=Callable[..., object])


def fill_doc(fn: _F) -> _F:
    """Decorator: ``fn`` with its docstring's ``{key}`` lines replaced from ``DOC_PARTS``."""

    def part(match: re.Match[str]) -> str:
        key = match["key"]
        text = DOC_PARTS[key].format(match["arg"] or _DOC_DEFAULTS.get(key, ""))
        return "\n".join(match["indent"] + line if line else line for line in text.split("\n"))

    if fn.__doc__:
        fn.__doc__ = _PLACEHOLDER.sub(part, fn.__doc__)
    return fn
