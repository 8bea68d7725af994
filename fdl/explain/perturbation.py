"""Occlusion (Zeiler and Fergus, 2014): the output drop when a sliding window is blanked out."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from fdl.explain._common import Target, as_baseline, expand_target, per_example

__all__ = ["occlusion", "occlusion_windows"]

Tensor = torch.Tensor


def _per_dim(value: int | Sequence[int] | None, ndim: int, name: str) -> tuple[int, ...]:
    if value is None:
        return (1,) * ndim
    if isinstance(value, int):
        return (value,) * ndim
    value = tuple(int(v) for v in value)
    if len(value) != ndim:
        raise ValueError(f"{name} needs one entry per non-batch input axis ({ndim}), got {value}")
    return value


def occlusion_windows(
    shape: Sequence[int],
    sliding_window_shapes: Sequence[int],
    strides: int | Sequence[int] | None = None,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """0/1 masks ``(num_windows, *shape)`` of every window position, first axis fastest.

    Along axis ``d`` the window of size ``k_d`` starts at ``j * s_d`` for
    ``j = 0 .. ceil((n_d - k_d) / s_d)``; the last start may leave less than
    ``k_d`` entries, and the window is then cut at the edge (Captum's rule).
    Window ``w = j_0 + c_0 (j_1 + c_1 (j_2 + ...))`` with ``c_d`` starts per axis.

    Example:
        >>> occlusion_windows((5,), (2,), 2).int().tolist()
        [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    window = _per_dim(tuple(sliding_window_shapes), ndim, "sliding_window_shapes")
    stride = _per_dim(strides, ndim, "strides")
    masks = []
    for size, k, s in zip(shape, window, stride, strict=True):
        if k > size:
            raise ValueError(f"sliding window {window} exceeds the input shape {shape}")
        if size > k and s > k:
            raise ValueError(f"stride {stride} cannot exceed the sliding window {window}")
        if s < 1 or k < 1:
            raise ValueError(f"windows and strides must be positive, got {window}, {stride}")
        starts = torch.arange(math.ceil((size - k) / s) + 1, device=device) * s  # (c_d,)
        idx = torch.arange(size, device=device)  # (n_d,)
        masks.append((idx >= starts[:, None]) & (idx < starts[:, None] + k))  # (c_d, n_d)
    out = torch.ones((1,) * (2 * ndim), dtype=torch.bool, device=device)
    for d, m in enumerate(masks):
        view = [1] * (2 * ndim)
        view[ndim - 1 - d], view[ndim + d] = m.shape  # window axes last-to-first, then data axes
        out = out & m.view(view)
    return out.reshape(-1, *shape)  # (c_{D-1} * ... * c_0, *shape)


def occlusion(
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = None,
    *,
    sliding_window_shapes: Sequence[int],
    strides: int | Sequence[int] | None = None,
    baselines: Tensor | float | None = None,
    perturbations_per_eval: int = 1,
    key: Tensor | None = None,
) -> Tensor:
    """Occlusion: the mean drop of the target output over the windows covering each entry.

    For every window ``W`` (a 0/1 mask from :func:`occlusion_windows`)
    ``x_W = x * (1 - W) + b * W`` and
    ``attr = sum_W (f_t(x) - f_t(x_W)) * W / sum_W W``.

    Args:
        forward, inputs, target: as in :func:`~fdl.explain.saliency`.
        sliding_window_shapes: the window over one example's axes
            (``(1, 3, 3)`` for ``(C, H, W)`` images).
        strides: window step per axis (an int for all axes; default 1).
        baselines: the occluding value ``b``: ``None`` (0), a scalar, one
            example's shape or the batch's shape.
        perturbations_per_eval: windows evaluated per call of ``forward``
            (a batch of ``perturbations_per_eval * N`` rows); higher is faster
            and uses more memory (and a shorter compiled graph).
        key: unused (deterministic).

    Returns:
        Attributions shaped like ``inputs``.

    Note:
        Captum divides in float32 (``total.float() / counts``); fdl keeps the
        input's dtype.

    Example:
        >>> import torch, fdl
        >>> f = lambda x: x.sum(1)           # drops: window [0, 1] -> 3, window [1, 2] -> 5
        >>> fdl.explain.occlusion(f, torch.tensor([[1.0, 2.0, 3.0]]), sliding_window_shapes=(2,))
        tensor([[3., 4., 5.]])
    """
    if perturbations_per_eval < 1:
        raise ValueError(f"perturbations_per_eval must be >= 1, got {perturbations_per_eval}")
    n, feat = inputs.shape[0], inputs.shape[1:]
    windows = occlusion_windows(feat, sliding_window_shapes, strides, device=inputs.device)
    windows = windows.to(inputs.dtype)  # (num_windows, ...)
    b = as_baseline(baselines, inputs)
    f0 = per_example(forward, inputs, target)  # (N,)
    total = torch.zeros_like(inputs)
    ones = (1,) * len(feat)
    for start in range(0, windows.shape[0], perturbations_per_eval):
        m = windows[start : start + perturbations_per_eval].unsqueeze(1)  # (k, 1, ...)
        k = m.shape[0]
        occluded = (inputs * (1 - m) + b * m).reshape(k * n, *feat)  # (k*N, ...)
        drop = f0 - per_example(forward, occluded, expand_target(target, k)).reshape(k, n)
        total = total + (drop.view(k, n, *ones) * m).sum(0)  # (N, ...)
    return total / windows.sum(0)
