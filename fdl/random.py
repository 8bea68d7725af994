"""Explicit, counter-based random numbers: keys in, numbers out, no global RNG.

A key is an ``int64`` tensor of shape ``(2,)`` holding two 32-bit words. Every
sampler is a pure function of ``(key, shape, ...)``: the same key gives the
same numbers eagerly, under ``torch.func.vmap`` over a batch of keys of shape
``(n, 2)``, and under ``torch.compile(fullgraph=True)``. The bits come from the
Threefry-2x32 block cipher (Salmon et al., 2011, "Parallel random numbers: as
easy as 1, 2, 3"), written in ``int64`` tensor ops on 32-bit words so no
operation overflows.

Example:
    >>> import fdl
    >>> k = fdl.random.key(0)
    >>> k1, k2 = fdl.random.split(k)
    >>> x = fdl.random.normal(k1, (3,))
    >>> bool((x == fdl.random.normal(k1, (3,))).all())
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "Key",
    "bernoulli",
    "bits",
    "fold_in",
    "key",
    "normal",
    "permutation",
    "randint",
    "split",
    "uniform",
]

Key = torch.Tensor

_MASK = 0xFFFFFFFF
_PARITY = 0x1BD11BDA
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, int):
        return (shape,)
    return tuple(int(s) for s in shape)


def _rotl(x: torch.Tensor, r: int) -> torch.Tensor:
    # x < 2**32 and r <= 29, so x << r < 2**61: no int64 overflow.
    return ((x << r) | (x >> (32 - r))) & _MASK


def _threefry2x32(
    k0: torch.Tensor, k1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Threefry-2x32 with 20 rounds on int64 tensors holding uint32 words."""
    k2 = k0 ^ k1 ^ _PARITY
    ks = (k0, k1, k2)
    x0 = (x0 + k0) & _MASK
    x1 = (x1 + k1) & _MASK
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x0 = (x0 + x1) & _MASK
            x1 = _rotl(x1, r) ^ x0
        x0 = (x0 + ks[(block + 1) % 3]) & _MASK
        x1 = (x1 + ks[(block + 2) % 3] + (block + 1)) & _MASK
    return x0, x1


def _check_key(k: torch.Tensor) -> None:
    if not isinstance(k, torch.Tensor) or k.shape[-1:] != (2,) or k.dtype != torch.int64:
        raise TypeError(
            "expected an fdl.random key (an int64 tensor of shape (2,), from "
            f"fdl.random.key(seed)); got {type(k).__name__} "
            f"{getattr(k, 'dtype', '')} {tuple(getattr(k, 'shape', ()))}"
        )


def key(seed: int) -> Key:
    """Make a key from an integer seed (any Python int; 64 bits are used).

    Example:
        >>> key(0).shape, key(0).dtype
        (torch.Size([2]), torch.int64)
    """
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return torch.tensor([seed >> 32, seed & _MASK], dtype=torch.int64)


def _counter_bits(k: Key, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two streams of ``n`` 32-bit words for counters ``0..n-1`` under key ``k``."""
    _check_key(k)
    c = torch.arange(n, dtype=torch.int64, device=k.device)
    return _threefry2x32(k[..., 0:1], k[..., 1:2], c >> 32, c & _MASK)


def split(k: Key, num: int = 2) -> Key:
    """Split a key into ``num`` independent keys, stacked on a leading axis.

    Example:
        >>> k1, k2 = split(key(0))
        >>> bool((k1 != k2).any())
        True
    """
    if num < 1:
        raise ValueError(f"split needs num >= 1, got {num}")
    x0, x1 = _counter_bits(k, num)
    return torch.stack([x0, x1], dim=-1)  # (num, 2)


def fold_in(k: Key, data: int | torch.Tensor) -> Key:
    """Mix an integer (a step, an index; Python int or int tensor) into a key.

    Example:
        >>> bool((fold_in(key(0), 1) != fold_in(key(0), 2)).any())
        True
    """
    _check_key(k)
    d = torch.as_tensor(data, dtype=torch.int64, device=k.device)
    x0, x1 = _threefry2x32(k[..., 0], k[..., 1], (d >> 32) & _MASK, d & _MASK)
    return torch.stack([x0, x1], dim=-1)


def bits(k: Key, shape: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two int64 tensors of ``shape`` holding independent uniform 32-bit words."""
    shape = _as_shape(shape)
    x0, x1 = _counter_bits(k, math.prod(shape))
    return x0.reshape(shape), x1.reshape(shape)


def uniform(
    k: Key,
    shape: int | Sequence[int] = (),
    low: float = 0.0,
    high: float = 1.0,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Uniform samples on ``[low, high)``.

    float32 (and lower) use 24 random bits; float64 uses 53.

    Example:
        >>> u = uniform(key(0), (1000,))
        >>> bool((u >= 0).all() and (u < 1).all())
        True
    """
    dtype = dtype or torch.get_default_dtype()
    x0, x1 = bits(k, shape)
    if dtype == torch.float64:
        u = ((x0 >> 5) * 67108864 + (x1 >> 6)).to(torch.float64) * (2.0**-53)
    else:
        u = (x0 >> 8).to(torch.float32) * (2.0**-24)
    u = u.to(dtype)
    if low == 0.0 and high == 1.0:
        return u
    return low + (high - low) * u


def normal(
    k: Key,
    shape: int | Sequence[int] = (),
    mean: float = 0.0,
    std: float = 1.0,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gaussian samples ``mean + std * z`` with ``z ~ N(0, 1)`` (inverse-CDF method).

    Example:
        >>> z = normal(key(0), (10000,))
        >>> abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05
        True
    """
    dtype = dtype or torch.get_default_dtype()
    work = torch.float64 if dtype == torch.float64 else torch.float32
    u = uniform(k, shape, dtype=work)
    # map [0, 1) to the open interval (-1, 1), then z = sqrt(2) * erfinv(v)
    eps = torch.finfo(work).eps
    v = torch.clamp(2.0 * u - 1.0, -1.0 + eps, 1.0 - eps)
    z = math.sqrt(2.0) * torch.erfinv(v)
    return (mean + std * z).to(dtype)


def bernoulli(
    k: Key, p: float | torch.Tensor = 0.5, shape: int | Sequence[int] | None = None
) -> torch.Tensor:
    """Boolean samples that are ``True`` with probability ``p`` (broadcast to ``shape``).

    Example:
        >>> b = bernoulli(key(0), 0.3, (10000,))
        >>> abs(float(b.float().mean()) - 0.3) < 0.02
        True
    """
    p_t = torch.as_tensor(p)
    if shape is None:
        shape = tuple(p_t.shape)
    u = uniform(k, shape, dtype=torch.float64 if p_t.dtype == torch.float64 else torch.float32)
    return u < p_t


def randint(
    k: Key, shape: int | Sequence[int], low: int, high: int, *, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """Integers uniform on ``[low, high)``.

    Example:
        >>> r = randint(key(0), (1000,), 0, 10)
        >>> int(r.min()), int(r.max())
        (0, 9)
    """
    if high <= low:
        raise ValueError(f"randint needs low < high, got low={low}, high={high}")
    u = uniform(k, shape, dtype=torch.float64)
    return (low + torch.floor(u * (high - low))).to(dtype)


def permutation(k: Key, n: int) -> torch.Tensor:
    """A uniformly random permutation of ``0..n-1`` (int64).

    Example:
        >>> sorted(permutation(key(0), 5).tolist())
        [0, 1, 2, 3, 4]
    """
    x0, x1 = bits(k, (n,))
    sort_key = x0 * 2147483648 + (x1 >> 1)  # 63 random bits, < 2**63
    return torch.argsort(sort_key, stable=True)
