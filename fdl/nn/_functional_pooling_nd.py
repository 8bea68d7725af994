"""Pooling in 1-3 dimensions beyond fdl's 1-d/2-d max/avg pools, plus ``fold``/``unfold``.

Windowed max, average, adaptive pools and im2col/col2im are kernels: fdl calls torch's
(``max_pool3d``, ``avg_pool3d``, ``adaptive_*_pool*d``, ``unfold``/``fold``), so values and
gradients are torch's. Written out here:

* ``lp_pool{1,2,3}d``: ``y = (sum_window x**p) ** (1/p)``, computed as
  ``(sign(a) * relu(|a|) * K) ** (1/p)`` with ``a = avg_pool(x**p)`` and ``K`` the window
  size (torch's formula, whose ``sign * relu`` keeps the gradient of ``a <= 0`` at 0);
* ``max_unpool{1,2,3}d``: ``y = zeros(N, C, prod(out)).scatter(2, indices, x)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as _torch_functional

from fdl.nn._functional_layers import _avg_pool, _max_pool
from fdl.nn._functional_named import with_first

# torch's stubs overload these kernels on Literal flags and narrow size types; fdl passes
# its arguments through unchanged, so the kernels are called untyped
_torch_F: Any = _torch_functional

__all__ = [
    "adaptive_avg_pool1d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "avg_pool3d",
    "fold",
    "lp_pool1d",
    "lp_pool2d",
    "lp_pool3d",
    "max_pool3d",
    "max_unpool1d",
    "max_unpool2d",
    "max_unpool3d",
    "unfold",
]

Tensor = torch.Tensor
_Size = int | Sequence[int]


def _tuple(v: _Size | None, n: int) -> tuple[int, ...] | None:
    if v is None:
        return None
    return (int(v),) * n if isinstance(v, int) else tuple(int(x) for x in v)


max_pool3d = with_first(
    _max_pool,
    3,
    "max_pool3d",
    """Max over 3-d windows of ``(N, C, D, H, W)`` / ``(C, D, H, W)`` (torch's kernel).

    Example:
        >>> import torch
        >>> max_pool3d(torch.arange(8.0).reshape(1, 1, 2, 2, 2), 2).flatten()
        tensor([7.])
    """,
)

avg_pool3d = with_first(
    _avg_pool,
    3,
    "avg_pool3d",
    """Mean over 3-d windows (torch's kernel).

    ``ceil_mode``, ``count_include_pad`` and ``divisor_override`` as in torch.

    Example:
        >>> import torch
        >>> avg_pool3d(torch.arange(8.0).reshape(1, 1, 2, 2, 2), 2).flatten()
        tensor([3.5000])
    """,
)


def adaptive_avg_pool1d(input: Tensor, output_size: int) -> Tensor:
    """Mean over ``output_size`` adaptive windows of the last dimension (torch's kernel)."""
    return _torch_F.adaptive_avg_pool1d(input, output_size)


def adaptive_avg_pool3d(input: Tensor, output_size: _Size) -> Tensor:
    """Mean over adaptive 3-d windows (torch's kernel); ``None`` in ``output_size`` keeps a size."""
    return _torch_F.adaptive_avg_pool3d(input, output_size)


def adaptive_max_pool1d(
    input: Tensor, output_size: int, return_indices: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Max over adaptive windows of the last dimension (torch's kernel)."""
    return _torch_F.adaptive_max_pool1d(input, output_size, return_indices)


def adaptive_max_pool2d(
    input: Tensor, output_size: _Size, return_indices: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Max over adaptive 2-d windows (torch's kernel)."""
    return _torch_F.adaptive_max_pool2d(input, output_size, return_indices)


def adaptive_max_pool3d(
    input: Tensor, output_size: _Size, return_indices: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Max over adaptive 3-d windows (torch's kernel)."""
    return _torch_F.adaptive_max_pool3d(input, output_size, return_indices)


def _lp_pool(
    n: int,
    input: Tensor,
    norm_type: float,
    kernel_size: _Size,
    stride: _Size | None = None,
    ceil_mode: bool = False,
) -> Tensor:
    k = _tuple(kernel_size, n)
    assert k is not None
    avg = (_torch_F.avg_pool1d, _torch_F.avg_pool2d, _torch_F.avg_pool3d)[n - 1]
    a = avg(input.pow(norm_type), k, stride if stride is not None else k, 0, ceil_mode)
    window = 1
    for s in k:
        window *= s
    return (torch.sign(a) * torch.relu(torch.abs(a))).mul(window).pow(1.0 / norm_type)


def lp_pool1d(
    input: Tensor,
    norm_type: float,
    kernel_size: int,
    stride: int | None = None,
    ceil_mode: bool = False,
) -> Tensor:
    """Power-average pooling over 1-d windows: ``(sum_window x**p) ** (1/p)``.

    Example:
        >>> import torch
        >>> lp_pool1d(torch.tensor([[[3.0, 4.0]]]), 2, 2)
        tensor([[[5.]]])
    """
    return _lp_pool(1, input, norm_type, kernel_size, stride, ceil_mode)


lp_pool2d = with_first(_lp_pool, 2, "lp_pool2d", """Power-average pooling over 2-d windows.""")
lp_pool3d = with_first(_lp_pool, 3, "lp_pool3d", """Power-average pooling over 3-d windows.""")


def _max_unpool(
    n: int,
    input: Tensor,
    indices: Tensor,
    kernel_size: _Size,
    stride: _Size | None = None,
    padding: _Size = 0,
    output_size: Sequence[int] | None = None,
) -> Tensor:
    name = f"max_unpool{n}d"
    if input.dim() not in (n + 1, n + 2) or indices.shape != input.shape:
        raise ValueError(
            f"{name}: input must be (N, C, *{n} dims) or (C, *{n} dims) with indices of its "
            f"shape, got {tuple(input.shape)} and {tuple(indices.shape)}"
        )
    k = _tuple(kernel_size, n)
    s = _tuple(stride, n) or k
    p = _tuple(padding, n)
    assert k is not None and s is not None and p is not None
    spatial = input.shape[-n:]
    if output_size is None:
        out = [(spatial[d] - 1) * s[d] - 2 * p[d] + k[d] for d in range(n)]
    else:
        out = [int(v) for v in output_size][-n:]
    unbatched = input.dim() == n + 1
    x = input.unsqueeze(0) if unbatched else input  # (N, C, *spatial)
    idx = indices.unsqueeze(0) if unbatched else indices
    size = 1
    for v in out:
        size *= v
    if not torch.compiler.is_compiling() and idx.numel() and int(idx.max()) >= size:
        raise ValueError(f"{name}: an index is out of range for output size {tuple(out)}")
    flat = torch.zeros(*x.shape[:2], size, dtype=x.dtype, device=x.device)  # (N, C, prod(out))
    y = flat.scatter(2, idx.flatten(2), x.flatten(2)).reshape(*x.shape[:2], *out)
    return y.squeeze(0) if unbatched else y


max_unpool1d = with_first(
    _max_unpool,
    1,
    "max_unpool1d",
    """Inverse of ``max_pool1d``: each value goes to its index, zeros elsewhere.

    Output length ``(L - 1) stride - 2 padding + kernel_size`` unless ``output_size``.

    Example:
        >>> import torch
        >>> max_unpool1d(torch.tensor([[[5.0]]]), torch.tensor([[[1]]]), 2)
        tensor([[[0., 5.]]])
    """,
)
max_unpool2d = with_first(
    _max_unpool,
    2,
    "max_unpool2d",
    """Inverse of ``max_pool2d`` (indices flat over ``H_out * W_out``).""",
)
max_unpool3d = with_first(
    _max_unpool,
    3,
    "max_unpool3d",
    """Inverse of ``max_pool3d`` (indices flat over ``D_out * H_out * W_out``).""",
)


def unfold(
    input: Tensor,
    kernel_size: _Size,
    dilation: _Size = 1,
    padding: _Size = 0,
    stride: _Size = 1,
) -> Tensor:
    """Sliding blocks: ``(N, C, H, W) -> (N, C * kH * kW, L)`` (torch's im2col kernel)."""
    return _torch_F.unfold(input, kernel_size, dilation, padding, stride)


def fold(
    input: Tensor,
    output_size: _Size,
    kernel_size: _Size,
    dilation: _Size = 1,
    padding: _Size = 0,
    stride: _Size = 1,
) -> Tensor:
    """Sum sliding blocks back: ``(N, C * kH * kW, L) -> (N, C, H, W)`` (torch's col2im kernel)."""
    return _torch_F.fold(input, output_size, kernel_size, dilation, padding, stride)
