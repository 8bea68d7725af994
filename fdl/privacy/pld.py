"""PLD accounting: pessimistic privacy loss distributions composed by FFT.

The privacy loss distribution (PLD) of a pair of output distributions ``(P, Q)`` is the
law of ``log(P(x)/Q(x))`` for ``x ~ P`` (Sommer, Meiser and Mohammadi 2019; Koskela,
Jälkö and Honkela 2020). Composition adds losses, so ``T`` steps convolve the PLD ``T``
times; the hockey-stick divergence gives δ at any ε:

    δ(ε) = P(∞) + Σ_ℓ p(ℓ) (1 - e^{ε - ℓ})_+ .

For Poisson-subsampled Gaussian noise (``σ``, rate ``q``, sensitivity 1) under
add/remove-one neighbours there are two worst-case pairs, composed separately; ε is the
larger of the two (δ likewise):

    remove:  P = (1 - q)·N(0, σ²) + q·N(-1, σ²),  Q = N(0, σ²)
    add:     P = N(0, σ²),  Q = (1 - q)·N(0, σ²) + q·N(1, σ²)

each with a closed form for one step's ``δ₁(ε) = P(X ≤ x_ε) - e^ε Q(X ≤ x_ε)``, where
``x_ε`` is the point whose privacy loss is ε.

Discretisation is pessimistic "connect the dots" (Doroshenko, Ghazi, Kamath, Kumar and
Manurangsi 2022, Algorithm 1): on the grid ``ε_k = k·h`` between the losses at the
noise's ``e^-50`` tails, with ``δ_k = δ₁(ε_k)`` and ``D = δ_{k+1} - δ_k``,

    p_first = 1 - δ_first + (δ_2 - δ_1)/(e^h - 1)
    p_k     = (D_k - e^h D_{k-1}) / (e^h - 1)
    p_last  = (δ_last - δ_last-1) / (e^{-h} - 1),   P(∞) = δ_last,

whose hockey-stick curve lies above the true one at every ε, so that every δ(ε) and
ε(δ) computed from the discretised PLD (and its compositions) is an upper bound. ``T``
compositions are one FFT power, over an index window that keeps all but
``tail_mass_truncation`` of the mass (Chernoff bound); the mass left out is counted at
+∞. This is the method of Google's ``dp_accounting`` ``PLDAccountant`` (default
``h = 1e-4``).

Example:
    >>> eps = pld_epsilon(steps=1000, noise_multiplier=1.0, sample_rate=0.01, delta=1e-5)
    >>> d = pld_delta(1000, 1.0, 0.01, epsilon=eps)
    >>> abs(d - 1e-5) < 1e-7
    True
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from fdl.privacy._checks import check_delta, check_number, check_rate
from fdl.privacy._special import fast_len, log_ndtr, ndtr, ndtri
from fdl.privacy.accountant import _check_noise, _check_steps

__all__ = ["pld_delta", "pld_epsilon"]

_LOG_TAIL = -50.0  # log of the noise mass left out at each end of one step
_CHERNOFF_ORDERS = 20  # orders ±k/n, k = 1..20, for the composition window


class _Pmf(NamedTuple):
    lower: int  # the loss of probs[0] is lower · h
    probs: np.ndarray
    inf_mass: float  # mass at +∞
    h: float


# ---------------------------------------------------------------------------
# one step
# ---------------------------------------------------------------------------


def _delta_one(eps: np.ndarray, q: float, sigma: float, add: bool) -> np.ndarray:
    """δ₁(ε) of one step for the remove (``add=False``) or add pair (formulas above)."""
    eps = np.asarray(eps, dtype=np.float64)
    out = np.zeros_like(eps)
    log_q, log_1mq = math.log(q), (math.log1p(-q) if q < 1.0 else -math.inf)
    s2 = sigma * sigma
    with np.errstate(divide="ignore", invalid="ignore"):
        if add:
            # loss -log(1 - q + q e^{(2x-1)/(2σ²)}) > ε  <=>  x < x_ε (ε < -log(1-q));
            # only used for q < 1
            ok = eps < -log_1mq
            e = eps[ok]
            x = 0.5 + s2 * (np.log(-np.expm1(e + log_1mq)) - e - log_q)
            upper = ndtr(x / sigma)
            log_lower = np.logaddexp(
                log_1mq + log_ndtr(x / sigma), log_q + log_ndtr((x - 1.0) / sigma)
            )
        else:
            # loss log(1 - q + q e^{(-2x-1)/(2σ²)}) > ε  <=>  x < x_ε (ε > log(1-q))
            ok = eps > log_1mq
            e = eps[ok]
            x = -0.5 - s2 * (e + np.log(-np.expm1(log_1mq - e)) - log_q)
            upper = (1.0 - q) * ndtr(x / sigma) + q * ndtr((x + 1.0) / sigma)
            log_lower = log_ndtr(x / sigma)
            out[~ok] = -np.expm1(eps[~ok])
    out[ok] = upper - np.exp(e + log_lower)
    return np.clip(out, 0.0, 1.0)


def _loss_one(x: float, q: float, sigma: float, add: bool) -> float:
    # remove: log(1 - q + q e^{(-2x-1)/(2σ²)});  add: minus the remove loss at -x
    u = (-2.0 * (-x if add else x) - 1.0) / (2.0 * sigma * sigma)
    loss = u if q == 1.0 else float(np.logaddexp(math.log1p(-q), math.log(q) + u))
    return -loss if add else loss


def _single_pmf(q: float, sigma: float, h: float, add: bool) -> _Pmf:
    """Pessimistic connect-the-dots PLD of one step on the grid k·h."""
    x_tail = sigma * ndtri(0.5 * math.exp(_LOG_TAIL))  # noise quantile, < 0
    x_lo, x_hi = (x_tail, 1.0 - x_tail) if add else (x_tail - 1.0, -x_tail)
    k_lo = math.floor(_loss_one(x_hi, q, sigma, add) / h)
    k_hi = math.ceil(_loss_one(x_lo, q, sigma, add) / h)
    deltas = _delta_one(h * np.arange(k_lo, k_hi + 1), q, sigma, add)
    if deltas.size == 1:
        return _Pmf(k_lo, np.array([1.0 - deltas[0]]), float(deltas[0]), h)
    deltas = np.minimum.accumulate(deltas)  # monotone up to round-off
    diff = np.diff(deltas)
    probs = np.empty_like(deltas)
    probs[0] = 1.0 - deltas[0] + diff[0] / math.expm1(h)
    probs[1:-1] = (diff[1:] - math.exp(h) * diff[:-1]) / math.expm1(h)
    probs[-1] = diff[-1] / math.expm1(-h)
    return _Pmf(k_lo, np.maximum(probs, 0.0), float(deltas[-1]), h)


# ---------------------------------------------------------------------------
# composition and conversion
# ---------------------------------------------------------------------------


def _window(probs: np.ndarray, steps: int, tail: float) -> tuple[int, int]:
    """Index range of the ``steps``-fold sum keeping all but ``tail`` of the mass (Chernoff)."""
    n = probs.size
    lo, hi = 0, (n - 1) * steps
    idx = np.arange(n)
    first, last = np.flatnonzero(probs)[[0, -1]]
    log_b = math.log(2.0 / tail)
    with np.errstate(divide="ignore"):
        for k in range(1, _CHERNOFF_ORDERS + 1):
            for lam in (k / n, -k / n):
                top = lam * (last if lam > 0 else first)  # the largest exponent with mass
                log_mgf = top + math.log(float(np.dot(probs, np.exp(lam * idx - top))))
                bound = (steps * log_mgf + log_b) / lam
                if not math.isfinite(bound):
                    continue
                if lam > 0:
                    hi = min(hi, math.ceil(bound))
                else:
                    lo = max(lo, math.floor(bound))
    return lo, hi


def _self_compose(pmf: _Pmf, steps: int, tail: float) -> _Pmf:
    """The PLD of ``steps`` compositions: FFT power over the Chernoff window."""
    if steps == 1:
        return pmf
    lo, hi = _window(pmf.probs, steps, tail)
    length = hi - lo + 1
    size = fast_len(max(length, pmf.probs.size))
    full = np.fft.irfft(np.fft.rfft(pmf.probs, size) ** steps, size)
    probs = np.roll(full, -lo)[:length]  # the sum's index i + lo, modulo the FFT length
    inf_mass = tail - math.expm1(steps * math.log1p(-pmf.inf_mass))
    return _Pmf(pmf.lower * steps + lo, probs, inf_mass, pmf.h)


def _pmf_epsilon(pmf: _Pmf, delta: float) -> float:
    """Smallest ε with δ(ε) <= delta on a discretised PLD (may be negative)."""
    if pmf.inf_mass > delta:
        return math.inf
    loss = pmf.h * (pmf.lower + np.arange(pmf.probs.size))
    up = pmf.inf_mass + np.cumsum(pmf.probs[::-1])[::-1]  # inf + Σ_{j>=i} p_j
    with np.errstate(over="ignore", invalid="ignore"):
        low = np.cumsum((pmf.probs * np.exp(-loss))[::-1])[::-1]  # Σ_{j>=i} p_j e^{-ℓ_j}
        # δ(ℓ_i) = up_{i+1} - e^{ℓ_i} low_{i+1}: δ at each grid loss, sums over j > i
        at = np.append(up[1:] - np.exp(loss[:-1]) * low[1:], pmf.inf_mass)
    over = np.flatnonzero(at > delta)
    i = 0 if over.size == 0 else int(over[-1]) + 1  # ε lies in (ℓ_{i-1}, ℓ_i]
    if low[i] == 0.0:
        return float(loss[i])
    return float(np.log((up[i] - delta) / low[i]))


def _pmf_delta(pmf: _Pmf, eps: float) -> float:
    loss = pmf.h * (pmf.lower + np.arange(pmf.probs.size))
    keep = loss > eps
    return float(pmf.inf_mass + np.dot(pmf.probs[keep], -np.expm1(eps - loss[keep])))


def _composed_plds(steps: int, sigma: float, q: float, h: float, tail: float) -> list[_Pmf]:
    pairs = [False] if q == 1.0 else [False, True]  # q = 1: the add pair equals the remove pair
    return [_self_compose(_single_pmf(q, sigma, h, add), steps, tail) for add in pairs]


def _check_pld_args(
    steps: int, noise_multiplier: float, sample_rate: float, h: float, tail: float
) -> tuple[int, float, float, float, float]:
    n = _check_steps(steps)
    q = check_rate(sample_rate)
    sigma = _check_noise(noise_multiplier)
    h = check_number(
        "value_discretization_interval", h, "a positive finite number", lambda v: 0 < v < math.inf
    )
    tail = check_number("tail_mass_truncation", tail, "in (0, 1)", lambda v: 0.0 < v < 1.0)
    return n, sigma, q, h, tail


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def pld_epsilon(
    steps: int,
    noise_multiplier: float,
    sample_rate: float,
    delta: float,
    *,
    value_discretization_interval: float = 1e-4,
    tail_mass_truncation: float = 1e-15,
) -> float:
    """ε at ``delta`` after ``steps`` Poisson-sampled Gaussian steps, from the pessimistic PLD.

    ``ε = max over the remove and add pairs of min{ε : δ_T(ε) <= δ}``, with ``δ_T`` the
    hockey-stick curve of the PLD discretised on ``k·h`` and composed ``steps`` times
    (module docstring). An upper bound on the true ε, up to float64 round-off.

    Args:
        steps: number of steps (>= 0; 0 gives ε = 0).
        noise_multiplier: ``σ`` (>= 0; 0 gives ``inf``).
        sample_rate: ``q`` in (0, 1].
        delta: ``δ`` in (0, 1).
        value_discretization_interval: ``h`` (> 0), the grid of losses.
        tail_mass_truncation: mass (in (0, 1)) the composition may drop; counted at +∞.

    Returns:
        ε as a float (>= 0; ``inf`` when the mass at +∞ exceeds ``delta``).

    Example:
        >>> round(pld_epsilon(100, 2.0, 1 / 600, 1e-5), 3)
        0.026
    """
    n, sigma, q, h, tail = _check_pld_args(
        steps, noise_multiplier, sample_rate, value_discretization_interval, tail_mass_truncation
    )
    d = check_delta(delta)
    if n == 0:
        return 0.0
    if sigma == 0.0:
        return math.inf
    return max(0.0, *(_pmf_epsilon(p, d) for p in _composed_plds(n, sigma, q, h, tail)))


def pld_delta(
    steps: int,
    noise_multiplier: float,
    sample_rate: float,
    epsilon: float,
    *,
    value_discretization_interval: float = 1e-4,
    tail_mass_truncation: float = 1e-15,
) -> float:
    """δ at ``epsilon`` after ``steps`` Poisson-sampled Gaussian steps, from the pessimistic PLD.

    ``δ = max over the remove and add pairs of P_T(∞) + Σ_ℓ p_T(ℓ)(1 - e^{ε-ℓ})_+``
    (module docstring); an upper bound on the true δ, up to float64 round-off.

    Args:
        steps: number of steps (>= 0; 0 gives δ = 0).
        noise_multiplier: ``σ`` (>= 0; 0 gives δ = 1).
        sample_rate: ``q`` in (0, 1].
        epsilon: ``ε`` (>= 0).
        value_discretization_interval: ``h`` (> 0).
        tail_mass_truncation: mass the composition may drop, in (0, 1).

    Returns:
        δ in [0, 1].

    Example:
        >>> 0.0 < pld_delta(1000, 1.0, 0.01, epsilon=1.0) < 0.1
        True
    """
    n, sigma, q, h, tail = _check_pld_args(
        steps, noise_multiplier, sample_rate, value_discretization_interval, tail_mass_truncation
    )
    eps = check_number("epsilon", epsilon, ">= 0", lambda v: v >= 0.0)
    if n == 0:
        return 0.0
    if sigma == 0.0:
        return 1.0
    deltas = [_pmf_delta(p, eps) for p in _composed_plds(n, sigma, q, h, tail)]
    return min(1.0, max(0.0, *deltas))
