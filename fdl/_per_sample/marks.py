"""Marks a layer puts on its call so that the per-sample rules step aside for it.

A layer whose per-example gradients have no rule (a recurrent time loop, whose
weights are reused at every step through a state that mixes them) calls
:func:`vmap_only` once per call. While the rules path records a loss
(:class:`fdl._per_sample.rules.Recorder` is active), the mark raises
:class:`VmapOnly`, which stops the recorded forward at once; the rules path
gives up with the layer's name as the reason and ``method="auto"`` takes the
``vmap`` path. At any other time the call does nothing.

This module imports nothing from fdl so that layers can call it cheaply.
"""

from __future__ import annotations

from typing import Any

# the recorders currently active, innermost last (entered and left by Recorder itself)
ACTIVE: list[Any] = []


class VmapOnly(Exception):
    """Raised by :func:`vmap_only` while the rules path records; the message is the layer."""


def vmap_only(layer: str) -> None:
    """Declare that ``layer``'s per-example gradients are computed by ``vmap``.

    Args:
        layer: the layer's name, quoted in the reason ``method="rules"`` gives.

    Example:
        >>> vmap_only("LSTM")  # outside a per-sample recording: no effect
    """
    if ACTIVE:
        raise VmapOnly(layer)
