"""The PRV, PLD and GDP accountants: parity with Opacus and dp_accounting, and properties.

Error model of the parity tolerances:

* PRV: fdl and Opacus's ``PRVAccountant`` build the same grid (same RDP domain bound, same
  mesh) and differ only in round-off and in how the continuous mean of the truncated PRV
  is integrated (Opacus: QUADPACK at its default tolerance 1.5e-8; fdl: composite
  Gauss-Legendre to round-off). A mean error Δ moves the composed grid by ``steps·Δ``;
  measured agreement is <= 2e-7 relative over the cases tried, asserted at 1e-5.
* PLD: fdl and dp_accounting's ``PLDAccountant`` discretise the same pessimistic
  connect-the-dots PLD on the same grid (h = 1e-4) and compose by FFT; they differ by
  round-off of the T-th FFT power and of the second differences of δ₁ (amplified by
  1/(e^h - 1) ≈ 1e4). Measured <= 6e-8 relative; asserted at 1e-5.
* GDP: the same closed form and a root solved to the last bit (Opacus's brentq stops at
  2e-12 absolute): asserted at 1e-10.

Opacus's ``PRVAccountant.get_epsilon`` reports the upper end ``ε̂(δ - δ/1000) + 0.01``
(its default ``eps_error = 0.01``), which is what ``epsilon(..., accountant="prv")``
returns.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings

import pytest

from fdl import privacy

# ---------------------------------------------------------------------------
# the peers
# ---------------------------------------------------------------------------


def _opacus_prv(steps, sigma, q, delta):
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = [(sigma, q, steps)]
    return acc.get_epsilon(delta=delta)


@functools.cache
def _dp_accounting_pld(steps, sigma, q):
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(event, steps)
    return acc


def _dp_accounting_epsilon(steps, sigma, q, delta):
    return _dp_accounting_pld(steps, sigma, q).get_epsilon(delta)


def _opacus_gdp(steps, sigma, q, delta):
    from opacus.accountants.analysis.gdp import compute_eps_poisson

    return compute_eps_poisson(steps=steps, noise_multiplier=sigma, sample_rate=q, delta=delta)


# (accountant, peer module, peer ε(steps, σ, q, δ), relative tolerance in ε)
PEERS = [
    ("prv", "opacus", _opacus_prv, 1e-5),
    ("pld", "dp_accounting", _dp_accounting_epsilon, 1e-5),
    ("gdp", "opacus", _opacus_gdp, 1e-10),
]
NUMERICAL = ["prv", "pld", "gdp"]
ALL = ["rdp", *NUMERICAL]

# (q, σ, steps, δ) for the numerical composition: every q in {1/600, 256/60000, 0.01, 0.05},
# σ in {0.8, 1.12, 2.0}, steps in {100, 1000, 14040}, δ in {1e-5, 1e-6} at least once, the
# Papernot et al. setting included, chosen to run in seconds
GRID_NUMERICAL = [
    (1 / 600, 2.0, 100, 1e-6),
    (0.05, 2.0, 1000, 1e-6),
    (0.01, 1.12, 100, 1e-5),
    (0.01, 0.8, 1000, 1e-5),
    (256 / 60000, 1.12, 14040, 1e-5),
]
# GDP is a closed form: the full product grid
GRID_GDP = list(
    itertools.product(
        [1 / 600, 256 / 60000, 0.01, 0.05], [0.8, 1.12, 2.0], [100, 1000, 14040], [1e-5, 1e-6]
    )
)


@functools.cache
def _eps(accountant, steps, sigma, q, delta):
    return privacy.epsilon(steps, sigma, q, delta, accountant=accountant)


# ---------------------------------------------------------------------------
# parity
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("accountant", "module", "peer", "rtol"), PEERS, ids=[p[0] for p in PEERS])
def test_epsilon_matches_peer(accountant, module, peer, rtol):
    pytest.importorskip(module)
    grid = GRID_GDP if accountant == "gdp" else GRID_NUMERICAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for q, sigma, steps, delta in grid:
            want = peer(steps, sigma, q, delta)
            got = _eps(accountant, steps, sigma, q, delta)
            assert math.isclose(got, want, rel_tol=rtol), (q, sigma, steps, delta, got, want)


def test_pld_both_deltas_and_delta_for_epsilon_match_dp_accounting():
    pytest.importorskip("dp_accounting")
    for q, sigma, steps, _ in GRID_NUMERICAL[:3]:
        acc = _dp_accounting_pld(steps, sigma, q)
        for delta in (1e-5, 1e-6):
            got = _eps("pld", steps, sigma, q, delta)
            assert math.isclose(got, acc.get_epsilon(delta), rel_tol=1e-5), (q, sigma, steps)
        for eps in (0.5,):
            got = privacy.pld_delta(steps, sigma, q, eps)
            # δ below ~1e-12 is the truncated tail mass (1e-15) plus round-off
            assert math.isclose(got, acc.get_delta(eps), rel_tol=1e-5, abs_tol=1e-12), (eps, q)


def test_pld_each_neighbouring_pair_matches_dp_accounting():
    # ε is the larger of the remove and add pairs' ε, and on the grid the remove pair is
    # always the larger: check the add pair on its own (fdl's and the peer's internals)
    pytest.importorskip("dp_accounting")
    from fdl.privacy import pld as fdl_pld

    for q, sigma, steps, delta in GRID_NUMERICAL[:3]:
        remove, add = fdl_pld._composed_plds(steps, sigma, q, 1e-4, 1e-15)
        peer = _dp_accounting_pld(steps, sigma, q)._pld
        for ours, theirs in ((remove, peer._pmf_remove), (add, peer._pmf_add)):
            eps = fdl_pld._pmf_epsilon(ours, delta)
            assert math.isclose(eps, theirs.get_epsilon_for_delta(delta), rel_tol=1e-5)
            # at half that ε, δ is well above round-off
            got = fdl_pld._pmf_delta(ours, eps / 2)
            assert math.isclose(got, theirs.get_delta_for_epsilon(eps / 2), rel_tol=1e-5)


def test_prv_delta_matches_opacus_discrete_prv():
    pytest.importorskip("opacus")
    from opacus.accountants import PRVAccountant

    for q, sigma, steps, _ in GRID_NUMERICAL[:2]:
        acc = PRVAccountant()
        acc.history = [(sigma, q, steps)]
        dprv = acc._get_dprv(eps_error=0.01, delta_error=1e-10)
        for eps in (0.05, 1.0):
            want = float(dprv.compute_delta_estimate(eps))
            got = privacy.prv_delta(steps, sigma, q, eps, delta_error=1e-10)
            assert math.isclose(got.estimate, want, rel_tol=1e-5, abs_tol=1e-13), (q, eps)
            assert got.lower <= got.estimate <= got.upper


def test_gdp_mu_and_delta_match_opacus():
    pytest.importorskip("opacus")
    from opacus.accountants.analysis import gdp

    for q, sigma, steps, _ in GRID_GDP[::5]:
        mu = privacy.gdp_mu(steps, sigma, q)
        want = gdp.compute_mu_poisson(steps=steps, noise_multiplier=sigma, sample_rate=q)
        assert math.isclose(mu, want, rel_tol=1e-12)
        for eps in (0.1, 1.0, 5.0):
            want = gdp.delta_eps_mu(eps=eps, mu=mu)
            assert math.isclose(privacy.gdp_delta(eps, mu), want, rel_tol=1e-9, abs_tol=1e-300)


# ---------------------------------------------------------------------------
# guarantees and consistency
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), GRID_NUMERICAL[:4])
def test_bounds_are_ordered(q, sigma, steps, delta):
    # PRV's interval holds the remove pair's true ε; the pessimistic PLD is above the true
    # ε of both pairs, and RDP is a (looser) upper bound too
    b = privacy.prv_epsilon(steps, sigma, q, delta)
    pld = _eps("pld", steps, sigma, q, delta)
    rdp = _eps("rdp", steps, sigma, q, delta)
    assert b.lower < b.estimate < b.upper
    assert math.isclose(b.upper, _eps("prv", steps, sigma, q, delta), rel_tol=1e-12)
    assert b.lower <= pld <= rdp
    assert b.upper <= rdp


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), GRID_NUMERICAL[:2])
def test_delta_inverts_epsilon(q, sigma, steps, delta):
    eps = _eps("pld", steps, sigma, q, delta)
    assert math.isclose(privacy.pld_delta(steps, sigma, q, eps), delta, rel_tol=1e-9)
    # the same grid as prv_epsilon's (δ_err = δ/1000): δ̂(ε̂(δ)) = δ
    b = privacy.prv_epsilon(steps, sigma, q, delta)
    d = privacy.prv_delta(steps, sigma, q, b.estimate, delta_error=delta / 1000)
    assert math.isclose(d.estimate, delta, rel_tol=1e-9)
    assert d.lower < delta < d.upper
    mu = privacy.gdp_mu(steps, sigma, q)
    gdp_eps = _eps("gdp", steps, sigma, q, delta)
    assert math.isclose(privacy.gdp_delta(gdp_eps, mu), delta, rel_tol=1e-12)


# ---------------------------------------------------------------------------
# monotonicity and the inverse, for every accountant
# ---------------------------------------------------------------------------

Q, STEPS, DELTA = 0.02, 100, 1e-5


@pytest.mark.parametrize("accountant", ALL)
def test_epsilon_decreases_in_sigma_increases_in_steps_and_rate(accountant):
    def e(sigma=1.5, steps=STEPS, q=Q):
        return _eps(accountant, steps, sigma, q, DELTA)

    assert e(sigma=1.2) > e() > e(sigma=2.0)
    assert e(steps=30) < e() < e(steps=300)
    assert e(q=0.01) < e() < e(q=0.04)


@pytest.mark.parametrize("accountant", ALL)
def test_noise_multiplier_for_inverts_epsilon(accountant):
    target = 1.0
    sigma = privacy.noise_multiplier_for(target, STEPS, Q, DELTA, accountant=accountant, rtol=1e-3)
    assert privacy.epsilon(STEPS, sigma, Q, DELTA, accountant=accountant) <= target
    assert privacy.epsilon(STEPS, sigma * (1 - 2e-3), Q, DELTA, accountant=accountant) > target


@pytest.mark.parametrize("accountant", ALL)
def test_edge_cases(accountant):
    assert privacy.epsilon(0, 1.0, 0.1, 1e-5, accountant=accountant) == 0.0
    assert privacy.epsilon(10, 0.0, 0.1, 1e-5, accountant=accountant) == math.inf


def test_full_batch_pld_is_the_gaussian_mechanism():
    # q = 1: T steps of N(0, σ²) are one Gaussian mechanism with σ/√T, whose δ(ε) is
    # Φ(-εσ'+1/(2σ')) - e^ε Φ(-εσ'-1/(2σ')) (Balle and Wang 2018)
    sigma, steps, eps = 4.0, 16, 1.0
    s = sigma / math.sqrt(steps)
    want = privacy.gdp_delta(eps, 1.0 / s)  # μ-GDP with μ = 1/σ' is exactly this curve
    got = privacy.pld_delta(steps, sigma, 1.0, eps)
    assert want <= got <= want * (1 + 1e-3)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_bad_accountant_and_orders():
    with pytest.raises(ValueError, match="accountant must be one of"):
        privacy.epsilon(10, 1.0, 0.1, 1e-5, accountant="moments")
    with pytest.raises(ValueError, match="accountant must be one of"):
        privacy.noise_multiplier_for(1.0, 10, 0.1, 1e-5, accountant="PRV")
    with pytest.raises(ValueError, match="orders apply to the 'rdp' accountant only"):
        privacy.epsilon(10, 1.0, 0.1, 1e-5, orders=[2.0, 4.0], accountant="pld")


@pytest.mark.parametrize("accountant", NUMERICAL)
def test_bad_common_arguments(accountant):
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\]"):
        privacy.epsilon(10, 1.0, 1.5, 1e-5, accountant=accountant)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        privacy.epsilon(10, 1.0, 0.1, 0.0, accountant=accountant)
    with pytest.raises(ValueError, match="noise_multiplier must be >= 0"):
        privacy.epsilon(10, -1.0, 0.1, 1e-5, accountant=accountant)
    with pytest.raises(ValueError, match="steps must be a non-negative integer"):
        privacy.epsilon(2.5, 1.0, 0.1, 1e-5, accountant=accountant)


def test_bad_accountant_options():
    with pytest.raises(ValueError, match="eps_error must be > 0"):
        privacy.prv_epsilon(10, 1.0, 0.1, 1e-5, eps_error=0.0)
    with pytest.raises(ValueError, match="delta_error must be < delta"):
        privacy.prv_epsilon(10, 1.0, 0.1, 1e-5, delta_error=1e-5)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        privacy.prv_delta(10, 1.0, 0.1, -1.0)
    with pytest.raises(ValueError, match="value_discretization_interval must be a positive"):
        privacy.pld_epsilon(10, 1.0, 0.1, 1e-5, value_discretization_interval=0.0)
    with pytest.raises(ValueError, match=r"tail_mass_truncation must be in \(0, 1\)"):
        privacy.pld_delta(10, 1.0, 0.1, 1.0, tail_mass_truncation=0.0)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        privacy.pld_delta(10, 1.0, 0.1, -0.5)
    with pytest.raises(ValueError, match="mu must be >= 0"):
        privacy.gdp_delta(1.0, -1.0)
