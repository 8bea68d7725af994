"""PRV accounting: numerical composition of the privacy loss random variable (Gopi et al. 2021).

Gopi, Lee and Wutschitz (2021, "Numerical Composition of Differential Privacy") compose
the privacy loss random variable (PRV) of a mechanism by discretising its distribution
on a grid and convolving it with itself by FFT. For one step of the Poisson-subsampled
Gaussian mechanism (noise ``σ``, sample rate ``q``, sensitivity 1) the PRV is

    Y = log(1 - q + q·exp((2X - 1)/(2σ²))),   X ~ (1 - q)·N(0, σ²) + q·N(1, σ²),

so that, with ``z = log((e^t - (1 - q))/q)`` and ``x_t = σ²z + 1/2``,

    P(Y > t) = (1 - q)·erfc(x_t/(√2σ))/2 + q·erfc((x_t - 1)/(√2σ))/2     (t > log(1 - q)),

and ``P(Y > t) = 1`` below ``log(1 - q)``. The method, in the code's symbols:

1. Domain ``[-L, L]`` with ``L = max(ε_RDP(T, δ_err/4), ε_RDP(1, δ_err/(8T)), ε_err) + 3``
   (the RDP bound of :func:`fdl.privacy.epsilon` gives where the tails are negligible).
2. Mesh ``h = ε_err / sqrt(T·log(12/δ_err)/2)``; grid points ``t_i = t_min + i·h``,
   ``t_min = -⌈L/h⌉h``, an even number ``N`` of them.
3. ``p_i = P(Y ∈ (t_i - h/2, t_i + h/2])`` for Y truncated to ``[t_min, t_max]``; the grid is
   moved by ``E[Y_trunc] - Σ t_i p_i`` so the discrete mean equals the continuous one.
4. ``T`` compositions: ``irfft(rfft(p)^T)`` (zero-padded to a fast FFT length), rolled
   back onto the grid (moved by T times the shift).
5. ``δ(ε) = Σ_{t_i > ε} p_i (1 - e^{ε - t_i})``; ε(δ) is solved on the piece of this curve
   between neighbouring grid points.

Theorem 5.5 of the paper bounds the error: the true ε at ``δ`` lies between
``ε̂(δ + δ_err) - ε_err`` and ``ε̂(δ - δ_err) + ε_err``, where ``ε̂`` is the estimate from the
discretised PRV. :func:`prv_epsilon` returns all three; the upper end is the guarantee
(and what ``fdl.privacy.epsilon(..., accountant="prv")`` and Opacus's ``PRVAccountant``
report, with ``ε_err = 0.01`` and ``δ_err = δ/1000`` by default).

Example:
    >>> b = prv_epsilon(steps=1000, noise_multiplier=1.0, sample_rate=0.01, delta=1e-5)
    >>> b.lower < b.estimate < b.upper
    True
    >>> round(b.upper - b.estimate, 4)
    0.01
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from fdl.privacy._checks import check_delta, check_number, check_rate
from fdl.privacy._special import erfc, fast_len
from fdl.privacy.accountant import _check_noise, _check_steps
from fdl.privacy.accountant import epsilon as _rdp_epsilon

__all__ = ["Bounds", "prv_delta", "prv_epsilon"]

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)  # per panel of the mean's rule


class Bounds(NamedTuple):
    """An estimate with the lower and upper bounds of its error analysis."""

    lower: float
    estimate: float
    upper: float


class _Grid(NamedTuple):
    t_min: float  # first grid point before the mean shift
    h: float  # mesh
    size: int  # number of points (even)


# ---------------------------------------------------------------------------
# the PRV of one step
# ---------------------------------------------------------------------------


def _survival(t: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """P(Y > t) of one step's PRV (formula in the module docstring)."""
    t = np.asarray(t, dtype=np.float64)
    out = np.ones_like(t)
    above = t > math.log1p(-q) if q < 1.0 else np.ones_like(t, dtype=bool)
    ta = t[above]
    with np.errstate(divide="ignore"):
        z = ta + np.log1p(-(1.0 - q) * np.exp(-ta)) - math.log(q)  # log((e^t - (1-q))/q)
    x = sigma * sigma * z + 0.5
    s = math.sqrt(2.0) * sigma
    out[above] = 0.5 * (1.0 - q) * erfc(x / s) + 0.5 * q * erfc((x - 1.0) / s)
    return out


def _loss(x: np.ndarray, q: float, sigma: float) -> np.ndarray:
    # Y as a function of X: log(1 - q + q exp((2x - 1)/(2σ²)))
    u = (2.0 * x - 1.0) / (2.0 * sigma * sigma)
    if q == 1.0:
        return u
    return np.logaddexp(math.log1p(-q), math.log(q) + u)


def _inverse_loss(t: float, q: float, sigma: float) -> float:
    # x_t = σ² log((e^t - (1-q))/q) + 1/2; -inf at or below log(1 - q)
    if q < 1.0 and t <= math.log1p(-q):
        return -math.inf
    with np.errstate(divide="ignore"):
        z = t + math.log1p(-(1.0 - q) * math.exp(-t)) - math.log(q)
    return sigma * sigma * z + 0.5


def _truncated_mean(q: float, sigma: float, t_min: float, t_max: float) -> float:
    """E[Y | t_min < Y <= t_max], integrated over X by composite 16-point Gauss-Legendre."""
    x_lo = max(_inverse_loss(t_min, q, sigma), -40.0 * sigma)
    x_hi = min(_inverse_loss(t_max, q, sigma), 1.0 + 40.0 * sigma)
    panels = max(1, math.ceil((x_hi - x_lo) / (0.25 * sigma)))
    edges = np.linspace(x_lo, x_hi, panels + 1)
    half = 0.5 * (edges[1:] - edges[:-1])
    x = (0.5 * (edges[1:] + edges[:-1]))[:, None] + half[:, None] * _GL_NODES[None, :]
    w = half[:, None] * _GL_WEIGHTS[None, :]  # (panels, 16)
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    dens = norm * (
        (1.0 - q) * np.exp(-0.5 * (x / sigma) ** 2) + q * np.exp(-0.5 * ((x - 1.0) / sigma) ** 2)
    )
    mass = _survival(np.array([t_min]), q, sigma)[0] - _survival(np.array([t_max]), q, sigma)[0]
    return float(np.sum(w * dens * _loss(x, q, sigma)) / mass)


# ---------------------------------------------------------------------------
# discretisation and composition
# ---------------------------------------------------------------------------


def _grid(
    steps: int, sigma: float, q: float, eps_error: float, delta_error: float
) -> tuple[_Grid, float]:
    """The grid of step 2 and ``t_max`` for the domain bound ``L`` of step 1."""
    bound = max(
        _rdp_epsilon(steps, sigma, q, delta_error / 4.0),
        _rdp_epsilon(1, sigma, q, delta_error / (8.0 * steps)),
        eps_error,
    )
    half_width = bound + 3.0
    h = eps_error / math.sqrt(steps * math.log(12.0 / delta_error) / 2.0)
    k = math.ceil(half_width / h)
    size = 2 * k + 1
    size += size % 2  # even: t_max = (k + 1)·h, the grid of Opacus and of the paper's code
    return _Grid(-k * h, h, size), -k * h + (size - 1) * h


def _composed(
    steps: int, sigma: float, q: float, eps_error: float, delta_error: float
) -> tuple[np.ndarray, np.ndarray]:
    """Grid points and probabilities of the discretised PRV composed ``steps`` times."""
    g, t_max = _grid(steps, sigma, q, eps_error, delta_error)
    t = g.t_min + g.h * np.arange(g.size)
    s_min = _survival(np.array([g.t_min]), q, sigma)[0]
    s_max = _survival(np.array([t_max]), q, sigma)[0]
    edges = np.concatenate([[g.t_min - g.h / 2.0], t + g.h / 2.0])
    # survival of the PRV truncated to [t_min, t_max], at the bin edges
    s_trunc = np.clip((_survival(edges, q, sigma) - s_max) / (s_min - s_max), 0.0, 1.0)
    s_trunc[0], s_trunc[-1] = 1.0, 0.0
    p = s_trunc[:-1] - s_trunc[1:]  # (size,)
    shift = _truncated_mean(q, sigma, g.t_min, t_max) - float(np.dot(t, p))
    if abs(shift) >= g.h / 2.0:
        raise RuntimeError(
            f"the discretised PRV's mean is {shift:.3g} off the continuous mean, more than "
            f"half the mesh {g.h:.3g}: the grid is too coarse"
        )
    # circular convolution over a fast FFT length m >= size (zero-padded); a sum of
    # `steps` grid values with index k has the value t_min + (k - (steps-1)·k0)·h,
    # k0 = -t_min/h, so grid point j is the sum's index j + (steps-1)·k0 modulo m
    m = fast_len(g.size)
    composed = np.fft.irfft(np.fft.rfft(p, m) ** steps, n=m)
    offset = (steps - 1) * round(-g.t_min / g.h)
    composed = np.roll(composed, -(offset % m))[: g.size]
    return t + steps * shift, composed


def _epsilon_at(t: np.ndarray, p: np.ndarray, delta: float) -> float:
    # δ(t_i) = D1_i - e^{t_i} D2_i with the sums over j >= i; solve on the first piece
    # where δ(t_i) <= delta
    d1 = np.cumsum(p[::-1])[::-1]
    d2 = np.cumsum((p * np.exp(-t))[::-1])[::-1]
    below = np.exp(t) * d2 - d1 >= -delta
    i = int(np.argmax(below))
    if i == 0 or not below[i]:
        raise RuntimeError(f"epsilon for delta={delta} is outside the PRV's domain")
    return float(np.log((d1[i] - delta) / d2[i]))


def _delta_at(t: np.ndarray, p: np.ndarray, eps: float) -> float:
    keep = t > eps
    return float(np.dot(p[keep], -np.expm1(eps - t[keep])))


def _check_errors(eps_error: float, delta_error: float) -> tuple[float, float]:
    e = check_number("eps_error", eps_error, "> 0", lambda v: 0.0 < v < math.inf)
    d = check_number("delta_error", delta_error, "in (0, 1)", lambda v: 0.0 < v < 1.0)
    return e, d


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def prv_epsilon(
    steps: int,
    noise_multiplier: float,
    sample_rate: float,
    delta: float,
    *,
    eps_error: float = 0.01,
    delta_error: float | None = None,
) -> Bounds:
    """ε at ``delta`` after ``steps`` Poisson-sampled Gaussian steps, by PRV composition.

    ``upper = ε̂(δ - δ_err) + ε_err`` and ``lower = ε̂(δ + δ_err) - ε_err`` bound the true ε
    (Gopi et al. 2021, Theorem 5.5); ``estimate = ε̂(δ)``. The method is in the module
    docstring.

    Args:
        steps: number of steps (>= 0; 0 gives ε = 0).
        noise_multiplier: ``σ`` (>= 0; 0 gives ``inf``).
        sample_rate: ``q`` in (0, 1].
        delta: ``δ`` in (0, 1).
        eps_error: ``ε_err`` (> 0), the error allowed in ε; sets the mesh.
        delta_error: ``δ_err`` in (0, δ); ``None`` for ``δ/1000``.

    Returns:
        :class:`Bounds` ``(lower, estimate, upper)``.

    Raises:
        ValueError: on bad input, or when float64 round-off over the grid (``2⁻⁵² · N``)
            reaches ``δ - δ_err``.

    Example:
        >>> b = prv_epsilon(100, 2.0, 1 / 600, 1e-5)
        >>> 0.0 < b.lower < b.estimate < b.upper < 0.05
        True
    """
    n = _check_steps(steps)
    q = check_rate(sample_rate)
    sigma = _check_noise(noise_multiplier)
    d = check_delta(delta)
    e_err, d_err = _check_errors(eps_error, d / 1000.0 if delta_error is None else delta_error)
    if d_err >= d:
        raise ValueError(f"delta_error must be < delta={d}, got {d_err}")
    if n == 0:
        return Bounds(0.0, 0.0, 0.0)
    if sigma == 0.0:
        return Bounds(math.inf, math.inf, math.inf)
    t, p = _composed(n, sigma, q, e_err, d_err)
    if np.finfo(np.float64).eps * t.size > d - d_err:
        raise ValueError(
            f"delta={d} is too small for a grid of {t.size} points: float64 round-off "
            "would dominate; increase delta or eps_error"
        )
    return Bounds(
        max(0.0, _epsilon_at(t, p, d + d_err) - e_err),
        max(0.0, _epsilon_at(t, p, d)),
        max(0.0, _epsilon_at(t, p, d - d_err)) + e_err,
    )


def prv_delta(
    steps: int,
    noise_multiplier: float,
    sample_rate: float,
    epsilon: float,
    *,
    eps_error: float = 0.01,
    delta_error: float = 1e-10,
) -> Bounds:
    """δ at ``epsilon`` after ``steps`` Poisson-sampled Gaussian steps, by PRV composition.

    With ``δ̂(ε) = Σ_{t_i > ε} p_i (1 - e^{ε - t_i})`` on the composed grid,
    ``lower = δ̂(ε + ε_err) - δ_err``, ``estimate = δ̂(ε)``, ``upper = δ̂(ε - ε_err) + δ_err``
    (Gopi et al. 2021, Theorem 5.5), clipped to [0, 1]. The grid is built for ``δ_err``
    as in :func:`prv_epsilon`.

    Args:
        steps: number of steps (>= 0; 0 gives δ = 0).
        noise_multiplier: ``σ`` (>= 0; 0 gives δ = 1).
        sample_rate: ``q`` in (0, 1].
        epsilon: ``ε`` (>= 0).
        eps_error: ``ε_err`` (> 0).
        delta_error: ``δ_err`` in (0, 1), the additive error allowed in δ.

    Returns:
        :class:`Bounds` ``(lower, estimate, upper)``.

    Example:
        >>> b = prv_delta(1000, 1.0, 0.01, epsilon=1.0)
        >>> 0.0 <= b.lower < b.estimate < b.upper < 1.0
        True
    """
    n = _check_steps(steps)
    q = check_rate(sample_rate)
    sigma = _check_noise(noise_multiplier)
    eps = check_number("epsilon", epsilon, ">= 0", lambda v: v >= 0.0)
    e_err, d_err = _check_errors(eps_error, delta_error)
    if n == 0:
        return Bounds(0.0, 0.0, 0.0)
    if sigma == 0.0:
        return Bounds(1.0, 1.0, 1.0)
    t, p = _composed(n, sigma, q, e_err, d_err)

    def clip(v: float) -> float:
        return min(1.0, max(0.0, v))

    return Bounds(
        clip(_delta_at(t, p, eps + e_err) - d_err),
        clip(_delta_at(t, p, eps)),
        clip(_delta_at(t, p, eps - e_err) + d_err),
    )
