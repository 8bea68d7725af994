"""``pad``: constant, reflect, replicate and circular padding, the index math written out.

Every mode is one gather per padded dimension: output position ``i`` (counted from
``-left``) reads input position ``src(i)``:

* ``constant``: ``i`` itself where ``0 <= i < n``, else ``value``;
* ``replicate``: ``clamp(i, 0, n - 1)``;
* ``reflect``: ``j = i mod 2(n - 1)``, then ``2(n - 1) - j`` where ``j >= n`` (the edge is
  not repeated);
* ``circular``: ``i mod n``.

The gathers are ``index_select`` (whose backward sums the gradient of every copy into its
source, as torch's padding backward does). Negative pads crop, in every mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["pad"]

Tensor = torch.Tensor
_MODES = ("constant", "reflect", "replicate", "circular")


def _source_index(mode: str, n: int, left: int, right: int, device: torch.device) -> Tensor:
    i = torch.arange(-left, n + right, device=device)  # output positions, in input coordinates
    if mode == "replicate":
        return i.clamp(0, n - 1)
    if mode == "reflect":
        if n == 1:
            return torch.zeros_like(i)
        period = 2 * (n - 1)
        j = torch.remainder(i, period)
        return torch.where(j >= n, period - j, j)
    if mode == "circular":
        return torch.remainder(i, n)
    return i.clamp(0, max(n - 1, 0))  # constant: masked afterwards


def _check(mode: str, n: int, left: int, right: int, dim: int) -> None:
    if n + left + right < 0 or (n + left + right == 0 and mode != "constant"):
        raise ValueError(f"pad: padding ({left}, {right}) leaves dimension {dim} (size {n}) empty")
    if mode == "reflect" and (left >= n or right >= n):
        raise ValueError(
            f"pad: reflect padding ({left}, {right}) must be less than the size {n} of "
            f"dimension {dim}"
        )
    if mode == "circular" and (left > n or right > n):
        raise ValueError(
            f"pad: circular padding ({left}, {right}) must be at most the size {n} of "
            f"dimension {dim}"
        )
    if mode in ("replicate", "reflect", "circular") and n == 0:
        raise ValueError(f"pad: {mode} padding needs a non-empty dimension {dim}")


def pad(
    input: Tensor, pad: Sequence[int], mode: str = "constant", value: float | None = None
) -> Tensor:
    """Pad the last ``len(pad) // 2`` dimensions, ``torch.nn.functional.pad``'s layout.

    ``pad = (left_last, right_last, left_second_last, right_second_last, ...)``. See the
    module docstring for each mode's index rule.

    Args:
        input: any shape; ``reflect``/``replicate``/``circular`` pad at most the last 3
            dimensions of a tensor with one or two more (batch and channel, as torch).
        pad: an even number of ints (negative values crop).
        mode: ``'constant'`` | ``'reflect'`` | ``'replicate'`` | ``'circular'``.
        value: the fill value of ``'constant'`` (default 0).

    Returns:
        The padded tensor.

    Example:
        >>> import torch
        >>> pad(torch.tensor([[1.0, 2.0, 3.0]]), (2, 1), mode="reflect")
        tensor([[3., 2., 1., 2., 3., 2.]])
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"pad: input must be a torch.Tensor, got {type(input).__name__}")
    pads = tuple(pad)
    if len(pads) % 2 or not all(isinstance(p, int) for p in pads):
        raise ValueError(f"pad: pad must be an even number of ints, got {pad!r}")
    if mode not in _MODES:
        raise ValueError(f"pad: mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
    k = len(pads) // 2
    if k > input.dim():
        raise ValueError(f"pad: {len(pads)} pad values for a {input.dim()}-d input")
    if mode != "constant":
        if value not in (None, 0, 0.0):
            raise ValueError(f"pad: value is only used by mode='constant', got {value!r}")
        if k > 3 or input.dim() not in (k + 1, k + 2):
            raise ValueError(
                f"pad: {mode} padding of {k} dimensions needs a {k + 1}-d or {k + 2}-d input, "
                f"got {tuple(input.shape)}"
            )
    fill = 0.0 if value is None else value
    out = input
    for j in range(k):
        dim = input.dim() - 1 - j
        left, right = pads[2 * j], pads[2 * j + 1]
        if left == 0 and right == 0:
            continue
        n = out.shape[dim]
        _check(mode, n, left, right, dim)
        idx = _source_index(mode, n, left, right, input.device)
        if mode == "constant" and n == 0:
            shape = list(out.shape)
            shape[dim] = n + left + right
            out = torch.full(shape, fill, dtype=out.dtype, device=out.device)
            continue
        moved = out.index_select(dim, idx)
        if mode == "constant":
            i = torch.arange(-left, n + right, device=input.device)
            inside = ((i >= 0) & (i < n)).reshape(-1, *([1] * (out.dim() - 1 - dim)))
            moved = torch.where(inside, moved, torch.full((), fill, dtype=out.dtype))
        out = moved
    return out
