"""Elementwise special functions on float64 NumPy arrays, by torch's kernels, and FFT sizes.

The PRV and PLD accountants work on NumPy grids; ``torch.special`` supplies ``erfc``,
``Φ`` (``ndtr``), ``log Φ`` and ``Φ⁻¹`` without a SciPy dependency.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["erfc", "fast_len", "log_ndtr", "ndtr", "ndtri"]


def _apply(fn, x: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.array(x, dtype=np.float64))  # a copy: the input is never shared
    return fn(t).numpy()


def erfc(x: np.ndarray) -> np.ndarray:
    return _apply(torch.special.erfc, x)


def ndtr(x: np.ndarray) -> np.ndarray:
    """Φ(x) = erfc(-x/√2)/2: accurate in the lower tail, where ``torch.special.ndtr``
    (computed from ``erf``) cancels to 0 below about x = -8."""
    return 0.5 * erfc(-np.asarray(x, dtype=np.float64) / np.sqrt(2.0))


def log_ndtr(x: np.ndarray) -> np.ndarray:
    return _apply(torch.special.log_ndtr, x)


def ndtri(p: float) -> float:
    return float(_apply(torch.special.ndtri, np.array([p]))[0])


def fast_len(n: int) -> int:
    """The smallest 5-smooth integer (2^a 3^b 5^c) >= n: a fast FFT length."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best
