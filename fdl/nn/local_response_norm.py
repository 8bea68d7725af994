"""``LocalResponseNorm`` and ``CrossMapLRN2d``: normalisation across neighbouring channels."""

from __future__ import annotations

import torch

from fdl.nn import _functional_norms as _F
from fdl.nn._fn_layer import _FnLayer

__all__ = ["CrossMapLRN2d", "LocalResponseNorm"]


class LocalResponseNorm(_FnLayer, fn=_F.local_response_norm):
    """``y = x / (k + alpha / size * sum of x**2 over size channels) ** beta``; ``(N, C, *)``.

    See :func:`fdl.nn.functional.local_response_norm` for the window.

    Example:
        >>> import torch, fdl
        >>> fdl.nn.LocalResponseNorm(2).apply({}, torch.zeros(1, 3, 2)).shape
        torch.Size([1, 3, 2])
    """

    size: int
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0


def _cross_map_window(channels: int, size: int) -> torch.Tensor:
    """``(C, C)`` 0/1 matrix: row ``c`` marks the channels summed for channel ``c``.

    torch's ``CrossMapLRN2d`` builds its sums with a running window that starts at
    ``[0, pre_pad)`` (``pre_pad = (size - 1) // 2 + 1``), adds channel ``c + pre_pad - 1`` at
    each step and drops channel ``c - pre_pad`` only for ``c > pre_pad``. This replays it.
    """
    pre_pad = int((size - 1) / 2 + 1)
    rows = []
    row = [1.0 if j < min(pre_pad, channels) else 0.0 for j in range(channels)]
    rows.append(list(row))
    for c in range(1, channels):
        if c < channels - pre_pad + 1:
            row[c + pre_pad - 1] += 1.0
        if c > pre_pad:
            row[c - pre_pad] -= 1.0
        rows.append(list(row))
    return torch.tensor(rows, dtype=torch.float64)


class CrossMapLRN2d(_FnLayer):
    """torch's legacy cross-channel LRN of ``(N, C, H, W)``.

    ``y = x * (k + alpha / size * s) ** -beta``,

    ``s[:, c] = sum_j W[c, j] * x[:, j]**2`` with ``W`` torch's running window (see
    ``_cross_map_window``: it keeps the first channel in every window from ``pre_pad`` on,
    which :class:`LocalResponseNorm` does not).

    Note:
        The gradient is the exact derivative of this forward (checked by finite
        differences); torch's hand-written backward is not the derivative of its own
        forward (on random inputs the two differ by up to half the gradient's size).

    Example:
        >>> import torch, fdl
        >>> fdl.nn.CrossMapLRN2d(3).apply({}, torch.zeros(1, 4, 2, 2)).shape
        torch.Size([1, 4, 2, 2])
    """

    size: int
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"CrossMapLRN2d: expected a 4-d input, got {x.dim()}-d")
        w = _cross_map_window(x.shape[1], self.size).to(dtype=x.dtype, device=x.device)
        s = torch.einsum("cj,njhw->nchw", w, x * x)  # (N, C, H, W)
        return x * (s * (self.alpha / self.size) + self.k) ** (-self.beta)
