"""Fractional max pooling (Graham, 2014) with samples from a key, the intervals written out.

For each ``(n, c)`` and spatial dimension one sample ``u ~ U[0, 1)`` places the windows:
with input size ``L``, window ``k`` and output size ``M``, ``alpha = (L - k) / (M - 1)`` and
window ``i`` starts at ``int((i + u) alpha) - int(u alpha)`` (the last at ``L - k``), computed
in the input's dtype as torch does. Each output is the max over its window; ``indices`` are
flat over the input's spatial size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fdl import random as _random
from fdl.nn._functional_named import with_first

__all__ = ["fractional_max_pool2d", "fractional_max_pool3d"]

Tensor = torch.Tensor


def _starts(u: Tensor, size: int, out: int, k: int) -> Tensor:
    """``(..., out)`` window starts from samples ``u`` ``(...)``."""
    i = torch.arange(out, device=u.device).to(u.dtype)
    if out > 1:
        alpha = torch.tensor(size - k, dtype=u.dtype) / torch.tensor(out - 1, dtype=u.dtype)
        starts = ((i + u[..., None]) * alpha).to(torch.int64) - (u * alpha).to(torch.int64)[
            ..., None
        ]
    else:
        starts = torch.zeros(*u.shape, out, dtype=torch.int64, device=u.device)
    last = torch.full_like(starts[..., :1], size - k)
    return torch.cat([starts[..., :-1], last], -1) if out > 0 else starts


def _fractional(
    n: int,
    input: Tensor,
    kernel_size: int | Sequence[int],
    output_size: int | Sequence[int] | None = None,
    output_ratio: float | Sequence[float] | None = None,
    return_indices: bool = False,
    _random_samples: Tensor | None = None,
    *,
    key: _random.Key | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    name = f"fractional_max_pool{n}d"
    if input.dim() not in (n + 1, n + 2):
        raise ValueError(f"{name}: expected a {n + 1}-d or {n + 2}-d input, got {input.dim()}-d")
    unbatched = input.dim() == n + 1
    x = input.unsqueeze(0) if unbatched else input  # (N, C, *spatial)
    k = (kernel_size,) * n if isinstance(kernel_size, int) else tuple(kernel_size)
    spatial = tuple(x.shape[2:])
    if output_size is None:
        if output_ratio is None:
            raise ValueError(f"{name}: needs output_size or output_ratio")
        ratio = (output_ratio,) * n if isinstance(output_ratio, (int, float)) else output_ratio
        out = tuple(int(s * r) for s, r in zip(spatial, ratio, strict=True))
    else:
        out = (output_size,) * n if isinstance(output_size, int) else tuple(output_size)
    for d in range(n):
        if out[d] + k[d] - 1 > spatial[d]:
            raise ValueError(
                f"{name}: output size {out} with kernel {k} is too large for input {spatial}"
            )
    if _random_samples is None:
        if key is None:
            raise ValueError(f"{name}: needs key=... (an fdl.random key) to place its windows")
        _random_samples = _random.uniform(key, (x.shape[0], x.shape[1], n), dtype=x.dtype)
    u = _random_samples.to(device=x.device, dtype=x.dtype)  # (N, C, n)
    # torch's sample order: the last spatial dimension first in 2-d, the first in 3-d
    order = [1, 0] if n == 2 else [0, 1, 2]
    flat = x.flatten(2)  # (N, C, prod(spatial))
    index = torch.zeros(*x.shape[:2], *([1] * (2 * n)), dtype=torch.int64, device=x.device)
    stride = 1
    for d in reversed(range(n)):
        starts = _starts(u[..., order[d]], spatial[d], out[d], k[d])  # (N, C, out_d)
        pos = starts[..., None] + torch.arange(k[d], device=x.device)  # (N, C, out_d, k_d)
        shape = [*x.shape[:2]] + [1] * (2 * n)
        shape[2 + d], shape[2 + n + d] = out[d], k[d]
        index = index + pos.reshape(shape) * stride  # (N, C, *out, *k) flat input positions
        stride *= spatial[d]
    index = index.flatten(2 + n)  # (N, C, *out, prod(k))
    windows = flat.gather(2, index.flatten(2)).reshape(index.shape)  # (N, C, *out, prod(k))
    best = windows.detach().argmax(-1, keepdim=True)
    indices = index.gather(-1, best).squeeze(-1)  # (N, C, *out)
    values = flat.gather(2, indices.flatten(2)).reshape(indices.shape)
    if unbatched:
        values, indices = values.squeeze(0), indices.squeeze(0)
    return (values, indices) if return_indices else values


fractional_max_pool2d = with_first(
    _fractional,
    2,
    "fractional_max_pool2d",
    """Fractional max pooling of ``(N, C, H, W)`` / ``(C, H, W)``; windows placed by ``key``.

    ``_random_samples`` ``(N, C, 2)`` (torch's argument) fixes the samples instead.

    Example:
        >>> import torch, fdl
        >>> x = torch.arange(25.0).reshape(1, 1, 5, 5)
        >>> fractional_max_pool2d(x, 2, output_size=2, key=fdl.random.key(0)).shape
        torch.Size([1, 1, 2, 2])
    """,
)
fractional_max_pool3d = with_first(
    _fractional,
    3,
    "fractional_max_pool3d",
    """Fractional max pooling of ``(N, C, D, H, W)`` / ``(C, D, H, W)``; windows from ``key``.""",
)
