"""Checks on the arrays of a dataset, shared by batching (``fdl.data``) and ``fdl.train.fit``.

Example:
    >>> import torch
    >>> from fdl._arrays import leading_size
    >>> leading_size([torch.zeros(5, 2), torch.zeros(5)])
    5
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["leading_size"]


def leading_size(arrays: Sequence[torch.Tensor], who: str = "batches") -> int:
    """The common leading size ``n`` of ``arrays``; ``ValueError`` (naming ``who``) otherwise."""
    if not arrays:
        raise ValueError(f"{who}: give at least one tensor")
    n = arrays[0].shape[0]
    for i, a in enumerate(arrays):
        if a.shape[0] != n:
            raise ValueError(
                f"{who}: all tensors need the same leading size; tensor 0 has {n}, "
                f"tensor {i} has {a.shape[0]}"
            )
    return n
