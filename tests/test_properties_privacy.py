"""The accountant honours its ``orders``: epsilon is the best RDP-to-(eps, delta) conversion
over exactly the orders given, composed over the steps, and noise_multiplier_for inverts
epsilon for those same orders. Stated through the public functions only, over a registry
of order sets (a single order, a few, fractional ones) that give different answers."""

from __future__ import annotations

import math

import pytest

from fdl import privacy

ORDER_SETS = {
    "single_2": (2.0,),
    "single_32": (32.0,),
    "few_integer": (3.0, 8.0, 16.0),
    "fractional": (1.5, 2.5, 6.25),
}
Q, STEPS, DELTA = 0.01, 500, 1e-5


@pytest.mark.parametrize("name", list(ORDER_SETS))
@pytest.mark.parametrize("sigma", [0.8, 1.5])
def test_epsilon_is_the_best_conversion_over_the_given_orders(name, sigma):
    orders = ORDER_SETS[name]
    rdp = [STEPS * r for r in privacy.rdp_sampled_gaussian(Q, sigma, orders)]
    expected, _ = privacy.rdp_to_epsilon(orders, rdp, DELTA)
    got = privacy.epsilon(STEPS, sigma, Q, DELTA, orders=orders)
    assert math.isclose(got, expected, rel_tol=1e-12)


def test_fewer_orders_never_give_a_smaller_epsilon():
    """The bound is a minimum over orders: dropping orders can only raise it."""
    full = privacy.epsilon(STEPS, 1.0, Q, DELTA)
    for orders in ORDER_SETS.values():
        assert privacy.epsilon(STEPS, 1.0, Q, DELTA, orders=orders) >= full
    assert privacy.epsilon(STEPS, 1.0, Q, DELTA, orders=(2.0,)) > 1.5 * full


@pytest.mark.parametrize("name", list(ORDER_SETS))
def test_noise_multiplier_for_inverts_epsilon_for_the_given_orders(name):
    orders = ORDER_SETS[name]
    target = 12.0  # reachable with a single order 2 (whose conversion alone costs ~10)
    sigma = privacy.noise_multiplier_for(target, STEPS, Q, DELTA, orders=orders, rtol=1e-7)
    assert privacy.epsilon(STEPS, sigma, Q, DELTA, orders=orders) <= target
    assert privacy.epsilon(STEPS, sigma * (1 - 1e-5), Q, DELTA, orders=orders) > target
