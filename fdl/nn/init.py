"""Parameter initialisers: pure functions of a key, with ``torch.nn.init``'s formulas.

Every initialiser has the signature ``init(key, shape, ..., *, dtype=None,
device=None) -> Tensor`` and draws from :mod:`fdl.random` (never the global
torch RNG). ``zeros`` and ``ones`` take a key too, so all initialisers are
interchangeable; they ignore it.

Fans follow ``torch.nn.init``: for a weight of shape ``(out, in, *kernel)``,
``fan_in = in * prod(kernel)`` and ``fan_out = out * prod(kernel)``.

Note:
    ``torch.nn.init`` fills an existing tensor in place (``kaiming_uniform_``);
    these return a new tensor and carry no trailing underscore.

Example:
    >>> import fdl
    >>> w = fdl.nn.init.kaiming_uniform(fdl.random.key(0), (128, 784), a=5**0.5)
    >>> bound = 1 / 784**0.5
    >>> bool(w.abs().max() <= bound), tuple(w.shape)
    (True, (128, 784))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from fdl import random as _random
from fdl.nn._functional_named import with_first as _with_first

__all__ = [
    "calculate_gain",
    "fans",
    "kaiming_normal",
    "kaiming_uniform",
    "normal",
    "ones",
    "uniform",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]

_LINEAR_LIKE = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
)


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)


def _key_on(key: _random.Key, device: torch.device | str | None) -> _random.Key:
    # on the meta device (shape evaluation) everything stays on meta
    if device is None or key.device.type == "meta":
        return key
    return key.to(device)


def _device(
    key: _random.Key | None, device: torch.device | str | None
) -> torch.device | str | None:
    if isinstance(key, torch.Tensor) and (device is None or key.device.type == "meta"):
        return key.device
    return device


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    r"""The recommended gain for a nonlinearity, as in ``torch.nn.init.calculate_gain``.

    ``linear``/``conv*``/``sigmoid``: :math:`1`; ``tanh``: :math:`5/3`;
    ``relu``: :math:`\sqrt{2}`; ``leaky_relu`` with slope ``a`` (default 0.01):
    :math:`\sqrt{2 / (1 + a^2)}`; ``selu``: :math:`3/4`.

    Args:
        nonlinearity: the name of the nonlinearity.
        param: the negative slope for ``leaky_relu``.

    Returns:
        The gain as a Python float.

    Example:
        >>> calculate_gain("relu") == 2**0.5
        True
    """
    if nonlinearity in _LINEAR_LIKE:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ValueError(f"calculate_gain: negative_slope {param!r} is not a valid number")
        return math.sqrt(2.0 / (1.0 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4.0
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def fans(shape: int | Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shape ``(out, in, *kernel)``.

    Args:
        shape: the weight's shape, at least two dimensions.

    Returns:
        ``(in * prod(kernel), out * prod(kernel))``.

    Example:
        >>> fans((32, 1, 3, 3))
        (9, 288)
    """
    shape = _shape(shape)
    if len(shape) < 2:
        raise ValueError(
            f"fans need a weight with at least 2 dimensions (out, in, ...), got shape {shape}"
        )
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def _fan(shape: tuple[int, ...], mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fans(shape)
    return fan_in if mode == "fan_in" else fan_out


def _drawn(
    draw: Callable[..., torch.Tensor],
    key: _random.Key,
    shape: int | Sequence[int],
    p1: float,
    p2: float,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> torch.Tensor:
    """``draw(key, shape, p1, p2)`` from :mod:`fdl.random` on ``device``."""
    if key.device.type == "meta":  # shape evaluation: no bits needed
        return torch.empty(_shape(shape), dtype=dtype, device="meta")
    return draw(_key_on(key, device), _shape(shape), p1, p2, dtype=dtype)


def uniform(
    key: _random.Key,
    shape: int | Sequence[int],
    a: float = 0.0,
    b: float = 1.0,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Samples from :math:`\mathcal{U}(a, b)`.

    Args:
        key: an ``fdl.random`` key.
        shape: the output shape.
        a: lower bound.
        b: upper bound.
        dtype: output dtype (default: torch's default dtype).
        device: output device (default: the key's device).

    Returns:
        A new tensor of ``shape``.

    Example:
        >>> import fdl
        >>> w = uniform(fdl.random.key(0), (3,), -1.0, 1.0)
        >>> bool(((w >= -1) & (w < 1)).all())
        True
    """
    return _drawn(_random.uniform, key, shape, a, b, dtype, device)


def normal(
    key: _random.Key,
    shape: int | Sequence[int],
    mean: float = 0.0,
    std: float = 1.0,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Samples from :math:`\mathcal{N}(\text{mean}, \text{std}^2)`.

    Args:
        key: an ``fdl.random`` key.
        shape: the output shape.
        mean: the mean.
        std: the standard deviation.
        dtype: output dtype (default: torch's default dtype).
        device: output device (default: the key's device).

    Returns:
        A new tensor of ``shape``.

    Example:
        >>> import fdl
        >>> normal(fdl.random.key(0), (2, 3)).shape
        torch.Size([2, 3])
    """
    return _drawn(_random.normal, key, shape, mean, std, dtype, device)


def _kaiming(
    dist: str,
    key: _random.Key,
    shape: int | Sequence[int],
    a: float = 0.0,
    mode: str = "fan_in",
    nonlinearity: str = "leaky_relu",
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    shape = _shape(shape)
    if math.prod(shape) == 0:
        return zeros(key, shape, dtype=dtype, device=device)
    if dist == "uniform":
        bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / _fan(shape, mode))
        return uniform(key, shape, -bound, bound, dtype=dtype, device=device)
    std = calculate_gain(nonlinearity, a) / math.sqrt(_fan(shape, mode))
    return normal(key, shape, 0.0, std, dtype=dtype, device=device)


# the arguments and result of both Kaiming and both Xavier initialisers, for ``{args}``
_KAIMING_ARGS = """Args:
        key: an ``fdl.random`` key.
        shape: weight shape ``(out, in, *kernel)``.
        a: negative slope of the following leaky ReLU.
        mode: ``"fan_in"`` or ``"fan_out"``.
        nonlinearity: passed to :func:`calculate_gain`.
        dtype: output dtype.
        device: output device.

    Returns:
        A new tensor of ``shape``."""
_XAVIER_ARGS = """Args:
        key: an ``fdl.random`` key.
        shape: weight shape ``(out, in, *kernel)``.
        gain: scaling factor.
        dtype: output dtype.
        device: output device.

    Returns:
        A new tensor of ``shape``."""

kaiming_uniform = _with_first(
    _kaiming,
    "uniform",
    "kaiming_uniform",
    r"""He-uniform: :math:`\mathcal{U}(-\text{bound}, \text{bound})` with
    ``bound = gain * sqrt(3 / fan)``, ``gain = calculate_gain(nonlinearity, a)``.

    ``torch.nn.Linear`` and ``Conv*d`` weights use ``a = sqrt(5)``, which gives
    ``bound = 1 / sqrt(fan_in)``.

    {args}

    Example:
        >>> import fdl
        >>> w = kaiming_uniform(fdl.random.key(0), (4, 9), nonlinearity="relu")
        >>> bool(w.abs().max() <= 2**0.5 * (3 / 9) ** 0.5)
        True
    """.replace("{args}", _KAIMING_ARGS),
)

kaiming_normal = _with_first(
    _kaiming,
    "normal",
    "kaiming_normal",
    r"""He-normal: :math:`\mathcal{N}(0, \text{std}^2)` with ``std = gain / sqrt(fan)``.

    {args}

    Example:
        >>> import fdl
        >>> kaiming_normal(fdl.random.key(0), (64, 32, 3, 3), mode="fan_out").shape
        torch.Size([64, 32, 3, 3])
    """.replace("{args}", _KAIMING_ARGS),
)


def _xavier(
    dist: str,
    key: _random.Key,
    shape: int | Sequence[int],
    gain: float = 1.0,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    shape = _shape(shape)
    fan_in, fan_out = fans(shape)
    if dist == "uniform":
        bound = gain * math.sqrt(6.0 / max(fan_in + fan_out, 1))
        return uniform(key, shape, -bound, bound, dtype=dtype, device=device)
    std = gain * math.sqrt(2.0 / max(fan_in + fan_out, 1))
    return normal(key, shape, 0.0, std, dtype=dtype, device=device)


xavier_uniform = _with_first(
    _xavier,
    "uniform",
    "xavier_uniform",
    r"""Glorot-uniform: :math:`\mathcal{U}(-a, a)` with ``a = gain * sqrt(6 / (fan_in + fan_out))``.

    {args}

    Example:
        >>> import fdl
        >>> w = xavier_uniform(fdl.random.key(0), (10, 20))
        >>> bool(w.abs().max() <= (6 / 30) ** 0.5)
        True
    """.replace("{args}", _XAVIER_ARGS),
)

xavier_normal = _with_first(
    _xavier,
    "normal",
    "xavier_normal",
    r"""Glorot-normal: :math:`\mathcal{N}(0, \text{std}^2)`, ``std = gain sqrt(2 / (fi + fo))``.

    ``fi, fo = fans(shape)``.

    {args}

    Example:
        >>> import fdl
        >>> xavier_normal(fdl.random.key(0), (10, 20)).shape
        torch.Size([10, 20])
    """.replace("{args}", _XAVIER_ARGS),
)


def _constant(
    fill: Callable[..., torch.Tensor],
    key: _random.Key | None,
    shape: int | Sequence[int],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    return fill(_shape(shape), dtype=dtype, device=_device(key, device))


zeros = _with_first(
    _constant,
    torch.zeros,
    "zeros",
    """Zeros (``key`` is ignored; it is there so every initialiser has one signature).

    Example:
        >>> zeros(None, (2,))
        tensor([0., 0.])
    """,
)

ones = _with_first(
    _constant,
    torch.ones,
    "ones",
    """Ones (``key`` is ignored; it is there so every initialiser has one signature).

    Example:
        >>> ones(None, (2,))
        tensor([1., 1.])
    """,
)
