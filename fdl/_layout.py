"""The steps' ``memory_format`` switch: run a step on channels-last strides, return torch's.

``memory_format="channels_last"`` gives every 4-d floating-point tensor that a
step receives (conv weights, image batches, their optimizer moments) the
``torch.channels_last`` strides (5-d ones ``torch.channels_last_3d``) before the
step runs, so each convolution, pooling and normalisation in it reads and
writes NHWC memory; the params and optimizer state the step returns get back
the strides of the ones passed in. Only strides change, never shapes or
values: ``x.to(memory_format=...)`` is a copy with the same entries,
and the returned params equal (and ``state_dict`` exactly as) those of the
default ``"preserve"``, which passes every tensor through as it comes.

Example:
    >>> import torch
    >>> from fdl._layout import with_memory_format
    >>> step = with_memory_format(lambda p, s, x: (p, s, x.stride()), "channels_last")
    >>> p, s, strides = step({"w": torch.ones(2, 3, 4, 4)}, (), torch.ones(2, 3, 4, 4))
    >>> strides, p["w"].stride()
    ((48, 1, 12, 3), (48, 16, 4, 1))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from fdl import tree as _tree

__all__ = [
    "MEMORY_FORMATS",
    "MemoryFormat",
    "channels_last",
    "check_memory_format",
    "eval_in_memory_format",
    "with_memory_format",
]

MemoryFormat = Literal["preserve", "channels_last"]
MEMORY_FORMATS: tuple[str, ...] = ("preserve", "channels_last")

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def check_memory_format(memory_format: Any, who: str) -> None:
    """ValueError naming ``who`` unless ``memory_format`` is one of :data:`MEMORY_FORMATS`."""
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(
            f"{who}: memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}"
        )


def _to_channels_last(leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor) and leaf.dim() in _CHANNELS_LAST and leaf.is_floating_point():
        # ``to``, not ``contiguous``: with one channel a tensor is already "contiguous" in
        # both layouts, and only ``to`` gives it the channel stride 1 the kernels look at
        return leaf.to(memory_format=_CHANNELS_LAST[leaf.dim()])
    return leaf


def _like(new: Any, old: Any) -> Any:
    """``new`` with the strides of ``old`` (a copy only where they differ)."""
    if (
        isinstance(new, torch.Tensor)
        and isinstance(old, torch.Tensor)
        and new.shape == old.shape
        and new.stride() != old.stride()
    ):
        return torch.empty_like(old, dtype=new.dtype).copy_(new)
    return new


def channels_last(tree: Any) -> Any:
    """Every 4-d (5-d) floating-point leaf of ``tree`` with channels-last (3-d) strides."""
    return _tree.map(_to_channels_last, tree)


def with_memory_format(
    step: Callable[..., tuple[Any, ...]], memory_format: MemoryFormat
) -> Callable[..., tuple[Any, ...]]:
    """Run ``step(params, opt_state, *inputs) -> (params, opt_state, *outputs)`` in a layout.

    ``"preserve"``: ``step`` itself. ``"channels_last"``: ``step`` called with
    :func:`channels_last` of ``params``, ``opt_state`` and ``inputs``; the
    returned ``params`` and ``opt_state`` leaves get the strides of the
    incoming ones (so a compiled step sees the same strides on every call and
    never recompiles); the other outputs are returned as they come.
    """
    check_memory_format(memory_format, "with_memory_format")
    if memory_format == "preserve":
        return step

    def step_in_layout(params: Any, opt_state: Any, *inputs: Any, **options: Any) -> tuple:
        new_params, new_state, *outputs = step(
            channels_last(params), channels_last(opt_state), *channels_last(inputs), **options
        )
        new_params = _tree.map(_like, new_params, params)
        new_state = _tree.map(_like, new_state, opt_state)
        return (new_params, new_state, *outputs)

    return step_in_layout


def eval_in_memory_format(
    fn: Callable[..., Any], memory_format: MemoryFormat
) -> Callable[..., Any]:
    """``fn(params, *batch)`` with :func:`channels_last` arguments (``"preserve"``: ``fn``)."""
    check_memory_format(memory_format, "eval_in_memory_format")
    if memory_format == "preserve":
        return fn

    def fn_in_layout(params: Any, *batch: Any) -> Any:
        return fn(channels_last(params), *channels_last(batch))

    return fn_in_layout
