"""Differential privacy: DP-SGD steps and the Rényi-DP accountant.

* :mod:`fdl.privacy.dp_sgd`: per-example clipping, Gaussian noise from an
  ``fdl.random`` key, Poisson batches of one fixed shape, and a train step
  usable with any ``fdl.optim`` optimizer.
* :mod:`fdl.privacy.adaptive`: DP-SGD whose clip norm follows a target
  quantile of the per-example gradient norms, estimated privately
  (Andrew et al. 2021), with the clip norm as explicit state.
* :mod:`fdl.privacy.accountant`: ε for the sampled Gaussian mechanism
  (:func:`epsilon`) and its inverse (:func:`noise_multiplier_for`), by Rényi DP or, with
  ``accountant=``, by one of the accountants below.
* :mod:`fdl.privacy.prv`: PRV composition with error bounds (:func:`prv_epsilon`,
  :func:`prv_delta`).
* :mod:`fdl.privacy.pld`: pessimistic privacy loss distributions composed by FFT
  (:func:`pld_epsilon`, :func:`pld_delta`).
* :mod:`fdl.privacy.gdp`: the Gaussian-DP central limit approximation (:func:`gdp_mu`,
  :func:`gdp_delta`, :func:`gdp_epsilon`).

Example:
    >>> import fdl
    >>> eps = fdl.privacy.epsilon(steps=2340, noise_multiplier=1.1, sample_rate=256 / 60000,
    ...                           delta=1e-5)
    >>> 1.0 < eps < 1.2
    True
"""

from fdl.privacy.accountant import (
    ACCOUNTANTS,
    DEFAULT_ORDERS,
    epsilon,
    noise_multiplier_for,
    rdp_sampled_gaussian,
    rdp_to_epsilon,
)
from fdl.privacy.adaptive import (
    AdaptiveClipState,
    adaptive_dp_grads,
    gradient_noise_multiplier,
    init_adaptive_clip,
    make_adaptive_dp_train_step,
)
from fdl.privacy.dp_sgd import (
    add_noise,
    clip_factors,
    clip_per_sample,
    dp_grads,
    make_dp_train_step,
    poisson_max_size,
    poisson_sample,
)
from fdl.privacy.gdp import gdp_delta, gdp_epsilon, gdp_mu
from fdl.privacy.pld import pld_delta, pld_epsilon
from fdl.privacy.prv import Bounds, prv_delta, prv_epsilon

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_ORDERS",
    "AdaptiveClipState",
    "adaptive_dp_grads",
    "Bounds",
    "add_noise",
    "clip_factors",
    "clip_per_sample",
    "dp_grads",
    "epsilon",
    "gradient_noise_multiplier",
    "init_adaptive_clip",
    "make_adaptive_dp_train_step",
    "gdp_delta",
    "gdp_epsilon",
    "gdp_mu",
    "make_dp_train_step",
    "noise_multiplier_for",
    "pld_delta",
    "pld_epsilon",
    "poisson_max_size",
    "poisson_sample",
    "prv_delta",
    "prv_epsilon",
    "rdp_sampled_gaussian",
    "rdp_to_epsilon",
]
