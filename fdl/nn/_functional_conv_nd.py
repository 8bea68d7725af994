"""``conv3d``, ``conv_transpose1d``, ``conv_transpose3d`` and ``one_hot``.

The convolutions are kernels: these are members of the families of fdl's
``conv1d``/``conv2d``/``conv_transpose2d`` (:mod:`fdl.nn._functional_layers`), which call
torch's kernels with torch's arguments.
"""

from __future__ import annotations

import torch

from fdl.nn._functional_layers import _conv, _conv_transpose
from fdl.nn._functional_named import with_first

__all__ = ["conv3d", "conv_transpose1d", "conv_transpose3d", "one_hot"]

Tensor = torch.Tensor


conv3d = with_first(
    _conv,
    3,
    "conv3d",
    """3-d cross-correlation ``(N, C_in, D, H, W) -> (N, C_out, ...)`` (torch's kernel).""",
)

conv_transpose1d = with_first(
    _conv_transpose, 1, "conv_transpose1d", """Transposed 1-d convolution (torch's kernel)."""
)
conv_transpose3d = with_first(
    _conv_transpose, 3, "conv_transpose3d", """Transposed 3-d convolution (torch's kernel)."""
)


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    """``y[..., c] = (tensor[...] == c)`` as int64; ``num_classes=-1``: ``max(tensor) + 1``.

    Example:
        >>> import torch
        >>> one_hot(torch.tensor([0, 2]))
        tensor([[1, 0, 0],
                [0, 0, 1]])
    """
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int64:
        raise TypeError("one_hot: tensor must be an int64 tensor of class indices")
    if num_classes == -1:
        num_classes = int(tensor.max()) + 1 if tensor.numel() else 0
    if tensor.numel() and (int(tensor.min()) < 0 or int(tensor.max()) >= num_classes):
        raise ValueError(f"one_hot: class values must be in [0, {num_classes - 1}]")
    classes = torch.arange(num_classes, device=tensor.device)
    return (tensor[..., None] == classes).to(torch.int64)  # (*, num_classes)
