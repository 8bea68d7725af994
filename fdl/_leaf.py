"""How a pytree leaf is named in an error message, shared by tree, checkpoint and testing.

Example:
    >>> import torch
    >>> from fdl._leaf import describe
    >>> describe(torch.zeros(2, 3)), describe(1.5)
    ('tensor(2, 3)', 'float')
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["describe"]


def describe(x: Any) -> str:
    """``"tensor(shape)"`` for a tensor, else the type's name."""
    if isinstance(x, torch.Tensor):
        return f"tensor{tuple(x.shape)}"
    return type(x).__name__
