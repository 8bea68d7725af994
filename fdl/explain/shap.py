"""GradientSHAP (Lundberg and Lee, 2017): expected gradients over random baselines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Required, TypedDict, Unpack, overload

import torch

import fdl.random
from fdl.explain._common import (
    Target,
    convergence_delta,
    gradient,
    repeat_interleave_target,
    require_key,
)

__all__ = ["gradient_shap"]

Tensor = torch.Tensor


class _Options(TypedDict, total=False):
    """The keyword arguments of :func:`gradient_shap` besides the delta flag."""

    baselines: Required[Tensor]
    n_samples: int
    stdevs: float
    key: Tensor | None


@overload
def gradient_shap(
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = ...,
    *,
    return_convergence_delta: Literal[False] = ...,
    **options: Unpack[_Options],
) -> Tensor: ...


@overload
def gradient_shap(
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = ...,
    *,
    return_convergence_delta: Literal[True],
    **options: Unpack[_Options],
) -> tuple[Tensor, Tensor]: ...


def gradient_shap(
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = None,
    *,
    baselines: Tensor,
    n_samples: int = 5,
    stdevs: float = 0.0,
    return_convergence_delta: bool = False,
    key: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """GradientSHAP: input-minus-baseline times the gradient at a random point between them.

    For each example ``i`` and sample ``s`` (all drawn from ``key``, split in three):
    a baseline ``b_is = baselines[r_is]`` with ``r_is`` uniform on
    ``0 .. R-1`` (``fdl.random.randint``), noise ``x_is = x_i + stdevs * z_is``
    (``z ~ N(0, 1)``) and ``a_is ~ U[0, 1)``; then

    ``attr_i = mean_s (x_is - b_is) * df_t/dx (a_is x_is + (1 - a_is) b_is)``.

    Args:
        forward, inputs, target: as in :func:`~fdl.explain.saliency`.
        baselines: the reference distribution, ``(R, *inputs.shape[1:])``.
        n_samples: random points per example.
        stdevs: standard deviation of the noise added to the inputs.
        return_convergence_delta: also return, per sample (``(N * n_samples,)``,
            example-major), ``sum(attr_is) - (f_t(x_is) - f_t(b_is))``.
        key: an ``fdl.random`` key (required).

    Returns:
        Attributions shaped like ``inputs``; with ``return_convergence_delta``,
        ``(attributions, delta)``.

    Note:
        Captum draws ``r`` and ``a`` from numpy's global RNG and ``z`` from torch's;
        here all three are pure functions of ``key``.

    Example:
        >>> import torch, fdl
        >>> w = torch.tensor([[1.0, -2.0]])
        >>> base = torch.zeros(3, 2)
        >>> fdl.explain.gradient_shap(lambda x: x @ w.T, torch.ones(1, 2), 0, baselines=base,
        ...                           key=fdl.random.key(0))      # linear: (x - 0) * w
        tensor([[ 1., -2.]])
    """
    key = require_key(key, "gradient_shap")
    n, feat = inputs.shape[0], inputs.shape[1:]
    if baselines.ndim != inputs.ndim or baselines.shape[1:] != feat:
        raise ValueError(
            f"baselines must be a batch (R, {', '.join(map(str, feat))}) of references, "
            f"got {tuple(baselines.shape)}"
        )
    k_index, k_noise, k_alpha = fdl.random.split(key, 3)
    index = fdl.random.randint(k_index, (n * n_samples,), 0, baselines.shape[0])
    z = fdl.random.normal(k_noise, (n, n_samples, *feat), dtype=inputs.dtype).to(inputs.device)
    alpha = fdl.random.uniform(k_alpha, (n * n_samples,), dtype=inputs.dtype).to(inputs.device)
    noisy = (inputs.unsqueeze(1) + stdevs * z).reshape(n * n_samples, *feat)  # (N*S, ...)
    base = baselines.to(inputs).index_select(0, index.to(inputs.device))  # (N*S, ...)
    alpha = alpha.view(-1, *(1,) * len(feat))
    scaled = alpha * noisy + (1.0 - alpha) * base
    rows_target = repeat_interleave_target(target, n_samples)
    rows = (noisy - base) * gradient(forward, scaled, rows_target)  # (N*S, ...)
    attributions = rows.reshape(n, n_samples, *feat).sum(1) / n_samples
    if not return_convergence_delta:
        return attributions
    return attributions, convergence_delta(forward, rows, noisy, base, rows_target)
