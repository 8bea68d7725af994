"""Rényi-DP accountant for the sampled Gaussian mechanism (DP-SGD with Poisson sampling).

Each DP-SGD step releases a sum of clipped per-example gradients plus Gaussian
noise N(0, σ²C²), over a batch in which every example is included
independently with probability ``q`` (the sample rate). Its Rényi divergence
of order α (Mironov, Talwar and Zhang, 2019, "Rényi Differential Privacy of
the Sampled Gaussian Mechanism", Section 3.3) is

    rdp(α) = log(A_α) / (α - 1)

with, for integer α,

    A_α = Σ_{i=0..α} binom(α, i) (1 - q)^(α - i) q^i exp((i² - i) / (2σ²))

and, for fractional α, ``A_α = A0 + A1`` with z0 = σ² log(1/q - 1) + 1/2 and

    A0 = Σ_i binom(α, i) q^i (1-q)^(α-i) exp((i² - i)/(2σ²)) · erfc((i - z0)/(√2 σ)) / 2
    A1 = Σ_i binom(α, i) q^(α-i) (1-q)^i exp(((α-i)² - (α-i))/(2σ²)) · erfc((z0 - (α-i))/(√2 σ)) / 2

summed until both terms fall below e^-30. RDP composes additively over steps,
and converts to (ε, δ)-DP by (Balle et al. 2020, Theorem 21)

    ε = min_α [ steps · rdp(α) + log((α - 1)/α) - (log δ + log α)/(α - 1) ].

The orders searched by default, :data:`DEFAULT_ORDERS`, are the usual grid
``1.1, 1.2, ..., 10.9, 12, 13, ..., 63``.

Example:
    >>> eps = epsilon(steps=1000, noise_multiplier=1.1, sample_rate=256 / 60000, delta=1e-5)
    >>> round(eps, 2)
    0.89
    >>> sigma = noise_multiplier_for(eps, steps=1000, sample_rate=256 / 60000, delta=1e-5)
    >>> round(sigma, 4)
    1.1
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fdl.privacy._checks import check_delta, check_number, check_rate

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_ORDERS",
    "epsilon",
    "noise_multiplier_for",
    "rdp_sampled_gaussian",
    "rdp_to_epsilon",
]

DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + k / 10.0 for k in range(1, 100)] + [float(a) for a in range(12, 64)]
)

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv", "pld", "gdp")

_STOP_LOG = -30.0  # fractional-order series: stop once both terms are below e^-30


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------


def _check_noise(noise_multiplier: float) -> float:
    return check_number("noise_multiplier", noise_multiplier, ">= 0", lambda s: s >= 0.0)


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    return int(steps)


def _check_accountant(accountant: str, orders: Sequence[float]) -> str:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    if accountant != "rdp" and tuple(float(a) for a in orders) != DEFAULT_ORDERS:
        raise ValueError(f"orders apply to the 'rdp' accountant only, not to {accountant!r}")
    return accountant


def _check_orders(orders: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(a) for a in orders)
    if not out or any(not a > 1.0 for a in out):
        raise ValueError(f"orders must be a non-empty sequence of numbers > 1, got {orders!r}")
    return out


# ---------------------------------------------------------------------------
# log-space helpers
# ---------------------------------------------------------------------------


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


def _log_erfc(x: float) -> float:
    """log(erfc(x)), accurate also where erfc(x) underflows (large positive x)."""
    if x < 20.0:
        return math.log(math.erfc(x))
    # asymptotic series: erfc(x) = exp(-x²)/(x√π) · (1 - 1/(2x²) + 3/(4x⁴) - 15/(8x⁶) + ...)
    t = 1.0 / (2.0 * x * x)
    series = 1.0 - t + 3.0 * t**2 - 15.0 * t**3 + 105.0 * t**4
    return -x * x - math.log(x * math.sqrt(math.pi)) + math.log(series)


def _log_binom_int(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


# ---------------------------------------------------------------------------
# RDP of one step
# ---------------------------------------------------------------------------


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    log_q, log_1mq = math.log(q), math.log1p(-q)
    acc = -math.inf
    for i in range(alpha + 1):
        term = (
            _log_binom_int(alpha, i)
            + i * log_q
            + (alpha - i) * log_1mq
            + (i * i - i) / (2.0 * sigma * sigma)
        )
        acc = _logaddexp(acc, term)
    return acc


def _log_term(
    log_c: float, u: float, v: float, log_q: float, log_1mq: float, two_s2: float, e: float
) -> float:
    # log of one half-term of the fractional-order series:
    # log|binom| + u log q + v log(1-q) + (u² - u)/(2σ²) + log(erfc(e)/2)
    return log_c + u * log_q + v * log_1mq + (u * u - u) / two_s2 + math.log(0.5) + _log_erfc(e)


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    log_q, log_1mq = math.log(q), math.log1p(-q)
    z0 = sigma * sigma * math.log(1.0 / q - 1.0) + 0.5
    two_s2 = 2.0 * sigma * sigma
    root2_sigma = math.sqrt(2.0) * sigma
    # positive and negative parts of the series, each in log space
    pos, neg = -math.inf, -math.inf
    coef = 1.0  # binom(alpha, i), built up by the recurrence binom(a, i) = binom(a, i-1)(a-i+1)/i
    i = 0
    while True:
        if i > 0:
            coef *= (alpha - i + 1) / i
        log_c = math.log(abs(coef))
        j = alpha - i
        t0 = _log_term(log_c, i, j, log_q, log_1mq, two_s2, (i - z0) / root2_sigma)
        t1 = _log_term(log_c, j, i, log_q, log_1mq, two_s2, (z0 - j) / root2_sigma)
        both = _logaddexp(t0, t1)
        if coef > 0:
            pos = _logaddexp(pos, both)
        else:
            neg = _logaddexp(neg, both)
        if max(t0, t1) < _STOP_LOG:
            break
        i += 1
    if neg == -math.inf:
        return pos
    if neg >= pos:  # cannot happen for valid inputs; guard against round-off
        return -math.inf
    return pos + math.log1p(-math.exp(neg - pos))


def _rdp_one(q: float, sigma: float, alpha: float) -> float:
    if sigma == 0.0:
        return math.inf
    if q == 1.0:
        return alpha / (2.0 * sigma * sigma)
    if float(alpha).is_integer():
        log_a = _log_a_int(q, sigma, int(alpha))
    else:
        log_a = _log_a_frac(q, sigma, alpha)
    return log_a / (alpha - 1.0)


def rdp_sampled_gaussian(
    sample_rate: float, noise_multiplier: float, orders: Sequence[float] = DEFAULT_ORDERS
) -> list[float]:
    """RDP of ONE step of the sampled Gaussian mechanism at each order: ``log(A_α)/(α-1)``.

    Args:
        sample_rate: ``q``, the probability that an example is in a batch, in (0, 1].
        noise_multiplier: ``σ``, noise std divided by the clipping norm (>= 0; 0 gives inf).
        orders: the orders α (> 1).

    Returns:
        A list of ``rdp(α)`` values, one per order (``inf`` where unbounded).

    Example:
        >>> [round(r, 4) for r in rdp_sampled_gaussian(1.0, 1.0, orders=[2.0, 3.0])]
        [1.0, 1.5]
    """
    q = check_rate(sample_rate)
    sigma = _check_noise(noise_multiplier)
    return [_rdp_one(q, sigma, a) for a in _check_orders(orders)]


def rdp_to_epsilon(
    orders: Sequence[float], rdp: Sequence[float], delta: float
) -> tuple[float, float]:
    """Convert total RDP values to ``(ε, best order)`` at ``delta``.

    ``ε = min_α [rdp(α) + log((α-1)/α) - (log δ + log α)/(α-1)]``; orders whose
    bound is not finite are skipped.

    Args:
        orders: the orders α (> 1).
        rdp: the (composed) RDP at each order.
        delta: the target δ in (0, 1).

    Returns:
        ``(epsilon, order)``; ``(inf, nan)`` when no order gives a finite bound.

    Example:
        >>> eps, order = rdp_to_epsilon([2.0, 4.0], [0.5, 1.0], delta=1e-5)
        >>> order
        4.0
    """
    alphas = _check_orders(orders)
    d = check_delta(delta)
    rdp = [float(r) for r in rdp]
    if len(rdp) != len(alphas):
        raise ValueError(f"rdp has {len(rdp)} values but there are {len(alphas)} orders")
    best, best_order = math.inf, math.nan
    for a, r in zip(alphas, rdp, strict=True):
        eps = r + math.log((a - 1.0) / a) - (math.log(d) + math.log(a)) / (a - 1.0)
        if eps < best:  # nan and inf never win
            best, best_order = eps, a
    return best, best_order


def epsilon(
    steps: int,
    noise_multiplier: float,
    sample_rate: float,
    delta: float,
    *,
    orders: Sequence[float] = DEFAULT_ORDERS,
    accountant: str = "rdp",
) -> float:
    """ε spent after ``steps`` DP-SGD steps with Poisson sampling, at ``delta``.

    ``accountant="rdp"`` (the default): ``ε = min_α [steps · rdp(α) + log((α-1)/α)
    - (log δ + log α)/(α-1)]`` with ``rdp`` from :func:`rdp_sampled_gaussian`. The
    others: ``"prv"`` the upper end of :func:`fdl.privacy.prv_epsilon` (ε_err = 0.01,
    δ_err = δ/1000), ``"pld"`` :func:`fdl.privacy.pld_epsilon` (grid 1e-4), ``"gdp"``
    :func:`fdl.privacy.gdp_epsilon` (a CLT approximation, not a bound).

    Args:
        steps: number of steps taken (>= 0; 0 gives ε = 0).
        noise_multiplier: ``σ`` (>= 0).
        sample_rate: ``q`` in (0, 1].
        delta: ``δ`` in (0, 1).
        orders: the RDP orders searched (``"rdp"`` only).
        accountant: one of :data:`ACCOUNTANTS`: ``"rdp"``, ``"prv"``, ``"pld"``, ``"gdp"``.

    Returns:
        ε as a float (``inf`` when ``noise_multiplier == 0``).

    Example:
        >>> round(epsilon(steps=2340, noise_multiplier=1.1, sample_rate=256 / 60000, delta=1e-5), 3)
        1.098
        >>> round(epsilon(2340, 1.1, 256 / 60000, 1e-5, accountant="pld"), 3)
        0.918
    """
    n = _check_steps(steps)
    q = check_rate(sample_rate)
    sigma = _check_noise(noise_multiplier)
    d = check_delta(delta)
    alphas = _check_orders(orders)
    if _check_accountant(accountant, alphas) != "rdp":
        return _numerical_epsilon(accountant, n, sigma, q, d)
    if n == 0:
        return 0.0
    rdp = [n * _rdp_one(q, sigma, a) for a in alphas]
    return rdp_to_epsilon(alphas, rdp, d)[0]


def _numerical_epsilon(accountant: str, n: int, sigma: float, q: float, d: float) -> float:
    # imported here: these modules import this one (argument checks, PRV's RDP domain bound)
    from fdl.privacy.gdp import gdp_epsilon
    from fdl.privacy.pld import pld_epsilon
    from fdl.privacy.prv import prv_epsilon

    if accountant == "prv":
        return prv_epsilon(n, sigma, q, d).upper
    if accountant == "pld":
        return pld_epsilon(n, sigma, q, d)
    return gdp_epsilon(n, sigma, q, d)


def noise_multiplier_for(
    target_epsilon: float,
    steps: int,
    sample_rate: float,
    delta: float,
    *,
    orders: Sequence[float] = DEFAULT_ORDERS,
    rtol: float = 1e-6,
    accountant: str = "rdp",
) -> float:
    """The smallest ``σ`` (to relative precision ``rtol``) with ``epsilon(steps, σ, ...) <= ε``.

    Bisection on σ (ε decreases as σ grows). The returned σ always satisfies
    the budget. For ``accountant="rdp"`` the bracket grows from ``[0, 1]`` by
    doubling; for the others it starts at the RDP answer (cheap) and is doubled or
    halved until it brackets the target, so that no evaluation uses a tiny σ (whose
    PRV grid would be huge).

    Args:
        target_epsilon: the ε budget (> 0).
        steps: number of steps (>= 1).
        sample_rate: ``q`` in (0, 1].
        delta: ``δ`` in (0, 1).
        orders: the RDP orders searched (``"rdp"`` only).
        rtol: relative precision of σ.
        accountant: as for :func:`epsilon`.

    Returns:
        σ as a float.

    Raises:
        ValueError: on bad input, or when no σ below 2**20 reaches the budget.

    Note:
        Opacus's ``get_noise_multiplier`` stops once ε is within 0.01 of the
        target, so it may return a slightly larger σ; this function bisects
        σ itself to ``rtol``.

    Example:
        >>> s = noise_multiplier_for(3.0, steps=1000, sample_rate=0.01, delta=1e-5)
        >>> epsilon(1000, s, 0.01, 1e-5) <= 3.0
        True
    """
    if not float(target_epsilon) > 0.0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")
    n = _check_steps(steps)
    if n == 0:
        raise ValueError("steps must be >= 1: zero steps spend no privacy budget at any noise")
    q = check_rate(sample_rate)
    d = check_delta(delta)
    alphas = _check_orders(orders)
    kind = _check_accountant(accountant, alphas)

    def eps_at(sigma: float) -> float:
        return epsilon(n, sigma, q, d, orders=alphas, accountant=kind)

    lo, hi = 0.0, 1.0
    if kind != "rdp":
        hi = noise_multiplier_for(target_epsilon, n, q, d, orders=alphas, rtol=1e-3)
        if eps_at(hi) <= target_epsilon:
            lo = 0.5 * hi
            while lo > 2.0**-20 and eps_at(lo) <= target_epsilon:
                hi, lo = lo, 0.5 * lo
        else:
            lo, hi = hi, 2.0 * hi
    while eps_at(hi) > target_epsilon:
        lo, hi = hi, 2.0 * hi
        if hi > 2.0**20:
            raise ValueError(
                f"no noise_multiplier up to 2**20 reaches epsilon={target_epsilon} "
                f"(steps={n}, sample_rate={q}, delta={d}): the budget is too small"
            )
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if eps_at(mid) > target_epsilon:
            lo = mid
        else:
            hi = mid
    return hi
