"""Gaussian-DP (μ-GDP) accounting of Poisson-sampled DP-SGD by the central limit theorem.

Dong, Roth and Su (2019, "Gaussian Differential Privacy") and Bu, Dong, Long and Su
(2020, "Deep Learning with Gaussian Differential Privacy") show that ``steps``
compositions of the Poisson-subsampled Gaussian mechanism tend, as ``steps`` grows with
``q·sqrt(steps)`` fixed, to μ-GDP with

    μ = q · sqrt(steps · (exp(1/σ²) - 1)).

μ-GDP is (ε, δ)-DP exactly for the pairs on the curve

    δ(ε) = Φ(-ε/μ + μ/2) - exp(ε) · Φ(-ε/μ - μ/2),

which :func:`gdp_epsilon` inverts by bisection on ε. The limit is an approximation, not
a bound: for the sample rates and step counts of DP-SGD it can report a smaller ε than
the mechanism has (Gopi, Lee and Wutschitz 2021 show it underestimating). This is the
Poisson accountant of Opacus's ``GaussianAccountant``.

Example:
    >>> round(gdp_mu(steps=1000, noise_multiplier=1.0, sample_rate=0.01), 4)
    0.4145
    >>> eps = gdp_epsilon(1000, 1.0, 0.01, delta=1e-5)
    >>> abs(gdp_delta(eps, 0.4145) - 1e-5) < 1e-7
    True
"""

from __future__ import annotations

import math

from fdl.privacy._checks import check_delta, check_number, check_rate
from fdl.privacy.accountant import _check_noise, _check_steps, _log_erfc

__all__ = ["gdp_delta", "gdp_epsilon", "gdp_mu"]

_SQRT2 = math.sqrt(2.0)


def _log_phi(x: float) -> float:
    """log Φ(x) = log(erfc(-x/√2) / 2), accurate far into the lower tail."""
    return math.log(0.5) + _log_erfc(-x / _SQRT2)


def _delta(eps: float, mu: float) -> float:
    # Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2); the second term in log space only where e^ε
    # would overflow or Φ underflow (erfc(x) underflows past x ≈ 26.5)
    first = 0.5 * math.erfc((eps / mu - mu / 2.0) / _SQRT2)
    b = (eps / mu + mu / 2.0) / _SQRT2  # Φ(-ε/μ - μ/2) = erfc(b)/2
    if eps < 700.0 and b < 26.0:
        return first - math.exp(eps) * 0.5 * math.erfc(b)
    return first - math.exp(eps + _log_phi(-eps / mu - mu / 2.0))


def gdp_mu(steps: int, noise_multiplier: float, sample_rate: float) -> float:
    """μ of ``steps`` Poisson-sampled Gaussian steps under the CLT: ``q·sqrt(T·(e^{1/σ²} - 1))``.

    Args:
        steps: ``T``, the number of steps (>= 0).
        noise_multiplier: ``σ`` (>= 0; 0 gives ``inf``).
        sample_rate: ``q`` in (0, 1].

    Returns:
        μ as a float.

    Example:
        >>> round(gdp_mu(100, 2.0, 0.1), 4)
        0.5329
    """
    n = _check_steps(steps)
    q = check_rate(sample_rate)
    sigma = _check_noise(noise_multiplier)
    if sigma == 0.0:
        return math.inf if n > 0 else 0.0
    return q * math.sqrt(n * math.expm1(sigma**-2))


def gdp_delta(epsilon: float, mu: float) -> float:
    """δ at ``epsilon`` of a μ-GDP mechanism: ``Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)``.

    Args:
        epsilon: ``ε`` (>= 0).
        mu: ``μ`` (>= 0).

    Returns:
        δ in [0, 1].

    Example:
        >>> round(gdp_delta(1.0, 1.0), 4)
        0.1269
    """
    eps = check_number("epsilon", epsilon, ">= 0", lambda e: e >= 0.0)
    m = check_number("mu", mu, ">= 0", lambda v: v >= 0.0)
    if m == 0.0:
        return 0.0
    if m == math.inf:
        return 1.0
    if eps == math.inf:
        return 0.0
    return min(1.0, max(0.0, _delta(eps, m)))


def gdp_epsilon(steps: int, noise_multiplier: float, sample_rate: float, delta: float) -> float:
    """ε at ``delta`` of ``steps`` Poisson-sampled Gaussian steps under the GDP CLT.

    Solves ``gdp_delta(ε, μ) = δ`` for ε with μ from :func:`gdp_mu`, by bisection to
    the last bit (δ(ε) decreases in ε).

    Args:
        steps: number of steps (>= 0; 0 gives ε = 0).
        noise_multiplier: ``σ`` (>= 0; 0 gives ``inf``).
        sample_rate: ``q`` in (0, 1].
        delta: ``δ`` in (0, 1).

    Returns:
        ε as a float; 0 when ``δ(0) <= δ`` already.

    Note:
        An approximation (the CLT limit), not a guarantee; Opacus warns the same. Opacus
        solves with ``brentq`` on ``[0, 500]`` and fails outside it; this function returns
        0 where ``δ(0) <= δ`` and widens the bracket above 500.

    Example:
        >>> round(gdp_epsilon(1000, 1.0, 0.01, 1e-5), 4)
        1.6177
    """
    mu = gdp_mu(steps, noise_multiplier, sample_rate)
    d = check_delta(delta)
    if mu == 0.0:
        return 0.0
    if mu == math.inf:
        return math.inf
    if _delta(0.0, mu) <= d:
        return 0.0
    lo, hi = 0.0, 1.0
    while _delta(hi, mu) > d:
        lo, hi = hi, 2.0 * hi
    while True:
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if _delta(mid, mu) > d:
            lo = mid
        else:
            hi = mid
    return hi
