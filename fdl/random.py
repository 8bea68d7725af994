"""Explicit, counter-based random numbers: keys in, numbers out, no global RNG.

A key is an ``int64`` tensor of shape ``(2,)`` holding two 32-bit words. Every
sampler is a pure function of ``(key, shape, ...)``: the same key gives the
same numbers eagerly, under ``torch.func.vmap`` over a batch of keys of shape
``(n, 2)``, and under ``torch.compile(fullgraph=True)``.

The bits come from the Threefry-2x32 block cipher with 20 rounds (Salmon et
al., 2011, "Parallel random numbers: as easy as 1, 2, 3"; the generator JAX
uses): ``threefry(key, counter)`` encrypts the 64-bit ``counter`` under the
64-bit ``key``. A sampler that needs ``n`` words encrypts the counters
``0 .. n-1``, so numbers depend only on the key and the position, never on
call order. The cipher runs in numpy ``uint32`` arithmetic on the CPU and in
``int64`` torch ops on 32-bit words elsewhere (no operation overflows), and is
registered as the custom operator ``fdl::threefry2x32``: ``torch.compile``
sees one opaque node instead of a chain of ~170 integer ops, which inductor
takes tens of seconds to minutes to compile; ``vmap`` over keys has its own
batching rule. Compiled samples are bit-identical to eager ones.

Rules of use: never reuse a key once it has been split or used to sample;
split it (``k1, k2 = split(key)``) or fold in a step/index (``fold_in``).

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
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
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
    "threefry2x32",
    "uniform",
]

Key = torch.Tensor

_MASK = 0xFFFFFFFF
_PARITY = 0x1BD11BDA
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
# fold_in flips the top bit of the counter's high word, so fold_in(k, d) and the
# counters split/samplers use (0 .. n-1) never meet for 0 <= d < 2**63.
_FOLD_TAG = 0x80000000


# ---------------------------------------------------------------------------
# The cipher
# ---------------------------------------------------------------------------


def _threefry2x32_impl(
    k0: torch.Tensor, k1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Threefry-2x32-20 on int64 tensors holding uint32 words (broadcasting).

    Each round: ``x0 = x0 + x1``, ``x1 = rotl(x1, r) ^ x0`` (mod 2**32), with
    the rotation constants ``_ROTATIONS``; every 4 rounds the key schedule
    ``(k0, k1, k0 ^ k1 ^ 0x1BD11BDA)`` is injected, plus the block index.
    """
    shape = torch.broadcast_shapes(k0.shape, k1.shape, x0.shape, x1.shape)
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    # Fresh contiguous buffers; the in-place ops below touch only them. y1 is
    # reduced mod 2**32 after every round (its rotation needs that); y0 only
    # grows by words < 2**32, so it stays below 2**38 and is reduced at the end.
    y0 = (x0 + k0).expand(shape).contiguous()
    y1 = (x1 + k1).bitwise_and_(_MASK).expand(shape).contiguous()
    tmp = torch.empty_like(y1)
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            y0.add_(y1)
            # low 32 bits of rotl(y1, r) ^ y0; y1 << r < 2**61, no overflow
            torch.bitwise_right_shift(y1, 32 - r, out=tmp)
            y1.bitwise_left_shift_(r).bitwise_or_(tmp).bitwise_xor_(y0).bitwise_and_(_MASK)
        y0.add_(ks[(block + 1) % 3])
        y1.add_(ks[(block + 2) % 3] + (block + 1)).bitwise_and_(_MASK)
    return y0.bitwise_and_(_MASK), y1


def _threefry2x32_numpy(
    k0: torch.Tensor, k1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same cipher on CPU in numpy ``uint32``, whose arithmetic wraps mod 2**32.

    No masking is needed and numpy's per-op overhead is several times lower
    than torch's on the small arrays samplers use.
    """
    a0, a1, b0, b1 = (t.numpy().astype(np.uint32) for t in (k0, k1, x0, x1))
    shape = np.broadcast_shapes(a0.shape, a1.shape, b0.shape, b1.shape)
    with np.errstate(over="ignore"):
        ks = (a0, a1, a0 ^ a1 ^ np.uint32(_PARITY))
        y0 = np.array(np.broadcast_to(b0 + a0, shape))  # fresh, writable
        y1 = np.array(np.broadcast_to(b1 + a1, shape))
        tmp = np.empty_like(y1)
        for block in range(5):
            for r in _ROTATIONS[block % 2]:
                np.add(y0, y1, out=y0)
                np.right_shift(y1, np.uint32(32 - r), out=tmp)
                np.left_shift(y1, np.uint32(r), out=y1)
                np.bitwise_or(y1, tmp, out=y1)
                np.bitwise_xor(y1, y0, out=y1)
            np.add(y0, ks[(block + 1) % 3], out=y0)
            np.add(y1, ks[(block + 2) % 3] + np.uint32(block + 1), out=y1)
    return torch.from_numpy(y0.astype(np.int64)), torch.from_numpy(y1.astype(np.int64))


@torch.library.custom_op("fdl::threefry2x32", mutates_args=())
def _threefry2x32_op(
    k0: torch.Tensor, k1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if all(t.device.type == "cpu" for t in (k0, k1, x0, x1)):
        return _threefry2x32_numpy(k0, k1, x0, x1)
    return _threefry2x32_impl(k0, k1, x0, x1)


@_threefry2x32_op.register_fake
def _(
    k0: torch.Tensor, k1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = torch.broadcast_shapes(k0.shape, k1.shape, x0.shape, x1.shape)
    return x0.new_empty(shape), x0.new_empty(shape)


def _threefry_vmap(
    info: Any, in_dims: tuple[int | None, ...], *args: torch.Tensor
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[int, int]]:
    # Batched arguments get their batch axis first, padded so that the logical
    # shapes line up from the right with the unbatched ones.
    rank = max(a.ndim - (d is not None) for a, d in zip(args, in_dims, strict=True))
    moved = []
    for a, d in zip(args, in_dims, strict=True):
        if d is None:
            moved.append(a)
        else:
            a = a.movedim(d, 0)
            moved.append(a.reshape(a.shape[:1] + (1,) * (rank + 1 - a.ndim) + a.shape[1:]))
    return _threefry2x32_op(*moved), (0, 0)


torch.library.register_vmap("fdl::threefry2x32", _threefry_vmap)


@torch.library.custom_op("fdl::std_normal_icdf", mutates_args=())
def _std_normal_icdf(v: torch.Tensor) -> torch.Tensor:
    # Opaque to inductor, whose own erfinv differs from ATen's in the last bit:
    # this keeps compiled samples identical to eager ones.
    return torch.erfinv(v).mul_(math.sqrt(2.0))


@_std_normal_icdf.register_fake
def _(v: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(v)


def _std_normal_icdf_vmap(
    info: Any, in_dims: tuple[int | None], v: torch.Tensor
) -> tuple[torch.Tensor, int | None]:
    return _std_normal_icdf(v), in_dims[0]  # elementwise: batch axis unchanged


torch.library.register_vmap("fdl::std_normal_icdf", _std_normal_icdf_vmap)


def threefry2x32(
    k0: torch.Tensor, k1: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encrypt the counter words ``(x0, x1)`` under the key words ``(k0, k1)``.

    Threefry-2x32 with 20 rounds, as in the Random123 reference. All four
    arguments are ``int64`` tensors holding values in ``[0, 2**32)``; they
    broadcast against each other.

    Args:
        k0, k1: the key words.
        x0, x1: the counter words.

    Returns:
        The two ciphertext words, ``int64`` tensors of the broadcast shape.

    Example (the first Random123 known-answer vector):
        >>> z = torch.zeros((), dtype=torch.int64)
        >>> [hex(int(w)) for w in threefry2x32(z, z, z, z)]
        ['0x6b200159', '0x99ba4efe']
    """
    for name, w in (("k0", k0), ("k1", k1), ("x0", x0), ("x1", x1)):
        if not isinstance(w, torch.Tensor) or w.dtype != torch.int64:
            raise TypeError(
                f"threefry2x32: {name} must be an int64 tensor of 32-bit words, got "
                f"{type(w).__name__} {getattr(w, 'dtype', '')}".rstrip()
            )
    return _threefry2x32_op(k0, k1, x0, x1)


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def _as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, (int, torch.SymInt)):
        shape = (shape,)
    out = tuple(shape)
    for s in out:
        if not isinstance(s, (int, torch.SymInt)) or s < 0:
            raise ValueError(f"shape must be a sequence of non-negative ints, got {shape!r}")
    return out


def _check_key(k: Any, name: str = "key") -> None:
    if not isinstance(k, torch.Tensor) or k.dtype != torch.int64:
        raise TypeError(
            f"{name} must be an fdl.random key (an int64 tensor of shape (2,) from "
            f"fdl.random.key(seed)); got {type(k).__name__} {getattr(k, 'dtype', '')}".rstrip()
        )
    if tuple(k.shape) != (2,):
        raise ValueError(
            f"{name} must have shape (2,), got {tuple(k.shape)}; for a batch of keys "
            "use torch.func.vmap over its leading axis"
        )


def key(seed: int | torch.Tensor) -> Key:
    """Make a key from an integer seed.

    Any Python int works; its low 64 bits are used (negative seeds wrap). An
    integer tensor of shape ``()`` works too, so seeds can be traced.

    Args:
        seed: the seed.

    Returns:
        ``int64`` tensor ``[seed >> 32, seed & 0xFFFFFFFF]`` of shape ``(2,)``.

    Example:
        >>> key(0).shape, key(0).dtype
        (torch.Size([2]), torch.int64)
        >>> key(2**32 + 5).tolist()
        [1, 5]
    """
    if isinstance(seed, torch.Tensor):
        if seed.dtype.is_floating_point or seed.dtype.is_complex or seed.ndim != 0:
            raise TypeError(
                f"seed must be an int or an integer tensor of shape (), got "
                f"{seed.dtype} {tuple(seed.shape)}"
            )
        s = seed.to(torch.int64)
        return torch.stack([(s >> 32) & _MASK, s & _MASK])
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return torch.tensor([seed >> 32, seed & _MASK], dtype=torch.int64)


def _encrypt_counters(k: Key, n: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Encrypt the counters ``0 .. n-1`` under ``k``: two streams of ``n`` words."""
    _check_key(k)
    c = torch.arange(n, dtype=torch.int64, device=k.device)
    return threefry2x32(k[0], k[1], c >> 32, c & _MASK)


def split(k: Key, num: int = 2) -> Key:
    """Split a key into ``num`` new keys, stacked on a leading axis.

    Key ``i`` is ``threefry(k, i)``: the two words of counter ``i``.

    Args:
        k: the key to split (do not use it again afterwards).
        num: how many keys, at least 1.

    Returns:
        ``int64`` tensor of shape ``(num, 2)``; unpack it or index it.

    Example:
        >>> k1, k2 = split(key(0))
        >>> bool((k1 != k2).any())
        True
        >>> split(key(0), 4).shape
        torch.Size([4, 2])
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"split needs an int num >= 1, got {num!r}")
    x0, x1 = _encrypt_counters(k, num, "split")
    return torch.stack([x0, x1], dim=-1)  # (num, 2)


def fold_in(k: Key, data: int | torch.Tensor) -> Key:
    """Derive a new key from ``k`` and an integer (a step, an index, ...).

    ``fold_in(k, d) = threefry(k, (hi(d) ^ 0x80000000, lo(d)))``: the tag bit
    keeps these counters apart from the ones :func:`split` and the samplers
    use, so ``fold_in(k, i)`` differs from ``split(k, n)[i]``. ``data`` may be
    an ``int64`` tensor of shape ``()`` (a step count inside a compiled step).

    Args:
        k: the key.
        data: a Python int or integer tensor of shape ``()``.

    Returns:
        A new key of shape ``(2,)``.

    Example:
        >>> bool((fold_in(key(0), 1) != fold_in(key(0), 2)).any())
        True
    """
    _check_key(k)
    if isinstance(data, torch.Tensor):
        if data.dtype.is_floating_point or data.dtype.is_complex or data.ndim != 0:
            raise TypeError(
                f"fold_in data must be an int or an integer tensor of shape (), got "
                f"{data.dtype} {tuple(data.shape)}"
            )
        d = data.to(device=k.device, dtype=torch.int64)
    elif isinstance(data, numbers.Integral) and not isinstance(data, bool):
        d = torch.tensor(int(data), dtype=torch.int64, device=k.device)
    else:
        raise TypeError(f"fold_in data must be an int, got {type(data).__name__}")
    x0, x1 = threefry2x32(k[0], k[1], ((d >> 32) & _MASK) ^ _FOLD_TAG, d & _MASK)
    return torch.stack([x0, x1], dim=-1)


# ---------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------


def bits(k: Key, shape: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``int64`` tensors of ``shape`` holding independent uniform 32-bit words.

    Element ``i`` (in row-major order) is the encryption of counter ``i``.

    Example:
        >>> hi, lo = bits(key(0), (2, 3))
        >>> hi.shape, bool((hi >= 0).all() and (hi < 2**32).all())
        (torch.Size([2, 3]), True)
    """
    shape = _as_shape(shape)
    x0, x1 = _encrypt_counters(k, math.prod(shape), "bits")
    return x0.reshape(shape), x1.reshape(shape)


def _words(k: Key, n: int) -> torch.Tensor:
    """``n`` uniform 32-bit words from ``ceil(n / 2)`` counters (both cipher outputs)."""
    x0, x1 = _encrypt_counters(k, (n + 1) // 2, "words")
    return torch.cat([x0, x1])[:n]


_SIGNIFICAND_BITS = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}


def _check_float_dtype(dtype: torch.dtype | None, fn: str) -> torch.dtype:
    dtype = dtype or torch.get_default_dtype()
    if dtype not in _SIGNIFICAND_BITS:
        raise TypeError(f"{fn} needs dtype float16, bfloat16, float32 or float64, got {dtype}")
    return dtype


def _unit_uniform(k: Key, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``m * 2**-b`` on ``[0, 1)`` with ``b`` = the significand bits of ``dtype``.

    Every value is exactly representable in ``dtype``, so nothing rounds to 1.
    """
    n = math.prod(shape)
    if dtype == torch.float64:
        x0, x1 = _encrypt_counters(k, n, "uniform")
        m = ((x0 >> 5) << 26) | (x1 >> 6)  # 27 + 26 = 53 random bits
        return (m.to(torch.float64) * 2.0**-53).reshape(shape)
    b = _SIGNIFICAND_BITS[dtype]
    m = _words(k, n) >> (32 - b)
    return (m.to(torch.float32) * 2.0**-b).to(dtype).reshape(shape)


def uniform(
    k: Key,
    shape: int | Sequence[int] = (),
    low: float | torch.Tensor = 0.0,
    high: float | torch.Tensor = 1.0,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Uniform samples on ``[low, high)``.

    ``u = m * 2**-b`` with ``m`` the top ``b`` bits of a random word (``b`` = 24
    for float32, 53 for float64 from two words, 11 for float16, 8 for bfloat16),
    then ``low + (high - low) * u``, kept below ``high`` where rounding would
    reach it.

    Args:
        k: key.
        shape: output shape.
        low, high: the interval; Python numbers with ``low <= high`` (all
            samples are ``low`` when they are equal), or tensors broadcasting
            against ``shape`` (not checked).
        dtype: a floating dtype (default: ``torch.get_default_dtype()``).

    Returns:
        A tensor of ``shape`` and ``dtype``.

    Example:
        >>> u = uniform(key(0), (1000,))
        >>> bool((u >= 0).all() and (u < 1).all())
        True
    """
    dtype = _check_float_dtype(dtype, "uniform")
    shape = _as_shape(shape)
    tensor_bounds = isinstance(low, torch.Tensor) or isinstance(high, torch.Tensor)
    if not tensor_bounds and not low <= high:
        raise ValueError(f"uniform needs low <= high, got low={low}, high={high}")
    u = _unit_uniform(k, shape, dtype)
    if not tensor_bounds and low == 0.0 and high == 1.0:
        return u
    low_t = torch.as_tensor(low, dtype=dtype, device=u.device)
    high_t = torch.as_tensor(high, dtype=dtype, device=u.device)
    out = low_t + (high_t - low_t) * u
    return torch.where(out < high_t, out, torch.nextafter(high_t, low_t))


def normal(
    k: Key,
    shape: int | Sequence[int] = (),
    mean: float | torch.Tensor = 0.0,
    std: float | torch.Tensor = 1.0,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gaussian samples ``mean + std * z`` with ``z ~ N(0, 1)`` by the inverse CDF.

    ``v = (2m + 1 - 2**b) * 2**-b`` is uniform on the open interval ``(-1, 1)``
    and symmetric about 0 (``m`` has ``b`` random bits: 24 for float32 and
    lower, 53 for float64); ``z = sqrt(2) * erfinv(v)``. The largest ``|z|`` is
    about 5.4 in float32 and 8.3 in float64.

    Args:
        k: key.
        shape: output shape.
        mean, std: Python numbers or tensors broadcasting against ``shape``.
        dtype: a floating dtype (default: ``torch.get_default_dtype()``);
            float16/bfloat16 are computed in float32 and rounded.

    Returns:
        A tensor of ``shape`` and ``dtype``.

    Example:
        >>> z = normal(key(0), (10000,))
        >>> abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05
        True
    """
    dtype = _check_float_dtype(dtype, "normal")
    shape = _as_shape(shape)
    if not isinstance(std, torch.Tensor) and std < 0:
        raise ValueError(f"normal needs std >= 0, got {std}")
    n = math.prod(shape)
    if dtype == torch.float64:
        x0, x1 = _encrypt_counters(k, n, "normal")
        m = ((x0 >> 5) << 26) | (x1 >> 6)  # 53 bits
        v = (2 * m + (1 - 2**53)).to(torch.float64) * 2.0**-53
    else:
        m = _words(k, n) >> 8  # 24 bits
        v = (2 * m + (1 - 2**24)).to(torch.float32) * 2.0**-24
    z = _std_normal_icdf(v).reshape(shape)
    if not isinstance(mean, torch.Tensor) and not isinstance(std, torch.Tensor):
        if mean == 0.0 and std == 1.0:
            return z.to(dtype)
    return (mean + std * z).to(dtype)


def bernoulli(
    k: Key, p: float | torch.Tensor = 0.5, shape: int | Sequence[int] | None = None
) -> torch.Tensor:
    """Boolean samples that are ``True`` with probability ``p``: ``u < p``, ``u ~ U[0, 1)``.

    Args:
        k: key.
        p: probability in ``[0, 1]``, a Python number or a tensor (e.g. a
            per-step keep rate); broadcast to ``shape``.
        shape: output shape; defaults to ``p``'s shape.

    Returns:
        A ``torch.bool`` tensor.

    Example:
        >>> b = bernoulli(key(0), 0.3, (10000,))
        >>> abs(float(b.float().mean()) - 0.3) < 0.02
        True
    """
    if isinstance(p, torch.Tensor):
        p_t = p
    elif isinstance(p, numbers.Real) and 0.0 <= p <= 1.0:
        p_t = torch.tensor(float(p))
    else:
        raise ValueError(f"bernoulli needs 0 <= p <= 1, got {p!r}")
    shape = tuple(p_t.shape) if shape is None else _as_shape(shape)
    work = torch.float64 if p_t.dtype == torch.float64 else torch.float32
    u = _unit_uniform(k, shape, work)
    return u < p_t.to(device=u.device)


def randint(
    k: Key, shape: int | Sequence[int], low: int, high: int, *, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """Integers uniform on ``[low, high)``: ``low + r % (high - low)``.

    ``r`` has 63 random bits (from both cipher words), so the modulo bias is
    below ``(high - low) / 2**63``: invisible for any practical range.

    Args:
        k: key.
        shape: output shape.
        low, high: Python ints with ``low < high`` and ``high - low < 2**62``.
        dtype: an integer dtype for the result (default ``torch.int64``).

    Returns:
        A tensor of ``shape`` and ``dtype``.

    Example:
        >>> r = randint(key(0), (1000,), 0, 10)
        >>> int(r.min()), int(r.max())
        (0, 9)
    """
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (numbers.Integral, torch.SymInt)):
            raise TypeError(f"randint {name} must be an int, got {type(v).__name__}")
    if not int(low) < int(high):
        raise ValueError(f"randint needs low < high, got low={low}, high={high}")
    span = int(high) - int(low)
    if span >= 2**62:
        raise ValueError(f"randint needs high - low < 2**62, got {span}")
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"randint needs an integer dtype, got {dtype}")
    x0, x1 = bits(k, shape)
    r = (x0 << 31) | (x1 >> 1)  # 63 random bits, < 2**63
    return (int(low) + r % span).to(dtype)


def permutation(k: Key, n: int) -> torch.Tensor:
    """A uniformly random permutation of ``0 .. n-1`` (``int64``).

    The indices sorted by 63-bit random sort keys (ties have probability about
    ``n**2 / 2**64``).

    Example:
        >>> sorted(permutation(key(0), 5).tolist())
        [0, 1, 2, 3, 4]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"permutation needs an int n >= 0, got {n!r}")
    x0, x1 = bits(k, (n,))
    sort_key = (x0 << 31) | (x1 >> 1)  # 63 random bits, < 2**63
    return torch.argsort(sort_key, stable=True)
