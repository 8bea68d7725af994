"""Integrated gradients (Sundararajan et al., 2017) with Riemann and Gauss-Legendre rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypedDict, Unpack, overload

import numpy as np
import torch

from fdl.explain._common import (
    Target,
    as_baseline,
    convergence_delta,
    expand_target,
    gradient,
)

__all__ = ["METHODS", "integrated_gradients", "quadrature"]

Tensor = torch.Tensor

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


@torch.compiler.assume_constant_result
def _rule(method: str, n_steps: int) -> Tensor:
    """``(2, n_steps)`` float64: the nodes ``alpha_k`` and weights ``w_k`` on ``[0, 1]``."""
    k = np.arange(n_steps, dtype=np.float64)
    w = np.full(n_steps, 1.0 / n_steps)
    if method == "riemann_left":
        alpha = k / n_steps
    elif method == "riemann_right":
        alpha = (k + 1) / n_steps
    elif method == "riemann_middle":
        alpha = (k + 0.5) / n_steps
    elif method == "riemann_trapezoid":
        alpha = k / (n_steps - 1)
        w[0] /= 2
        w[-1] /= 2
    else:  # Gauss-Legendre on [-1, 1], mapped to [0, 1]
        x, wx = np.polynomial.legendre.leggauss(n_steps)
        alpha, w = (1 + x) / 2, wx / 2
    return torch.from_numpy(np.stack([alpha, w]))


def quadrature(method: str, n_steps: int) -> tuple[Tensor, Tensor]:
    """Nodes ``alpha`` and weights ``w`` (float64, ``(n_steps,)``) of an IG rule on ``[0, 1]``.

    * ``riemann_left``: ``alpha_k = k/n``; ``riemann_right``: ``(k+1)/n``;
      ``riemann_middle``: ``(k+1/2)/n``; all with ``w_k = 1/n``.
    * ``riemann_trapezoid``: ``alpha_k = k/(n-1)``, ``w_k = 1/n`` with the two
      end weights halved (Captum's rule: the weights sum to ``1 - 1/n``).
    * ``gausslegendre``: the Gauss-Legendre nodes ``t_k`` and weights ``v_k``
      on ``[-1, 1]`` mapped to ``alpha_k = (1 + t_k)/2``, ``w_k = v_k/2``.

    Riemann rules need ``n >= 2``, Gauss-Legendre ``n >= 1``.

    Example:
        >>> alpha, w = quadrature("riemann_middle", 4)
        >>> alpha.tolist(), w.tolist()
        ([0.125, 0.375, 0.625, 0.875], [0.25, 0.25, 0.25, 0.25])
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if n_steps < (1 if method == "gausslegendre" else 2):
        raise ValueError(f"{method} needs n_steps >= {1 if method == 'gausslegendre' else 2}")
    rule = _rule(method, int(n_steps))
    return rule[0], rule[1]


class _Options(TypedDict, total=False):
    """The keyword arguments of :func:`integrated_gradients` besides the delta flag."""

    baselines: Tensor | float | None
    n_steps: int
    method: str
    internal_batch_size: int | None
    key: Tensor | None


@overload
def integrated_gradients(
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = ...,
    *,
    return_convergence_delta: Literal[False] = ...,
    **options: Unpack[_Options],
) -> Tensor: ...


@overload
def integrated_gradients(
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = ...,
    *,
    return_convergence_delta: Literal[True],
    **options: Unpack[_Options],
) -> tuple[Tensor, Tensor]: ...


def integrated_gradients(
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = None,
    *,
    baselines: Tensor | float | None = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    return_convergence_delta: bool = False,
    key: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrated gradients: the path integral of the gradient from a baseline to the input.

    ``attr = (x - b) * sum_k w_k * df_t/dx (b + alpha_k (x - b))``, a quadrature of
    ``(x - b) * integral_0^1 df_t/dx (b + a (x - b)) da`` with the nodes ``alpha_k``
    and weights ``w_k`` of ``method`` (see :func:`quadrature`). Completeness:
    ``sum(attr_i) ~= f_t(x_i) - f_t(b_i)``; the convergence delta is the error
    ``delta_i = sum(attr_i) - (f_t(x_i) - f_t(b_i))``.

    All ``n_steps * N`` points go through ``forward`` as one batch (step-major:
    row ``k * N + i`` is example ``i`` at ``alpha_k``), or in chunks of
    ``max(1, internal_batch_size // N)`` steps when ``internal_batch_size`` is set.

    Args:
        forward: a pure function of the batch (``lambda x: model.apply(params, x)``).
        inputs: the batch ``(N, ...)``.
        target: which output to explain (see :mod:`fdl.explain`).
        baselines: ``b``: ``None`` (zeros), a scalar, one example ``inputs.shape[1:]``
            or a batch ``inputs.shape``.
        n_steps: number of quadrature nodes.
        method: ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"``,
            ``"riemann_trapezoid"`` or ``"gausslegendre"`` (default).
        internal_batch_size: at most this many rows per forward/backward pass.
        return_convergence_delta: also return ``delta`` of shape ``(N,)``.
        key: unused (deterministic).

    Returns:
        Attributions shaped like ``inputs``; with ``return_convergence_delta``,
        ``(attributions, delta)``.

    Note:
        Captum rounds the nodes and weights to float32 (``torch.linspace`` in the
        default dtype and ``torch.tensor(step_sizes).float()``); fdl keeps them in
        float64 and rounds once to the input's dtype, so float64 attributions
        carry no float32 quadrature error.

    Example:
        >>> import torch, fdl
        >>> f = lambda x: (x**2).sum(1)          # f(x) = |x|^2, f(0) = 0
        >>> x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
        >>> attr, delta = fdl.explain.integrated_gradients(
        ...     f, x, n_steps=4, return_convergence_delta=True)
        >>> attr                                  # x_j^2: exact for a quadratic
        tensor([[1., 4.]], dtype=torch.float64)
        >>> abs(float(delta)) < 1e-12
        True
    """
    alpha, w = quadrature(method, n_steps)
    alpha, w = alpha.to(inputs), w.to(inputs)
    b = as_baseline(baselines, inputs)
    diff = inputs - b
    n = inputs.shape[0]
    chunk = n_steps if internal_batch_size is None else max(1, internal_batch_size // n)
    total = torch.zeros_like(inputs)
    for start in range(0, n_steps, chunk):
        a = alpha[start : start + chunk]
        s = a.shape[0]
        bshape = (s,) + (1,) * inputs.ndim
        scaled = (b + a.view(bshape) * diff).reshape(s * n, *inputs.shape[1:])  # (s*N, ...)
        grads = gradient(forward, scaled, expand_target(target, s))
        grads = grads.reshape(s, -1) * w[start : start + chunk].view(s, 1)  # (s, N*features)
        total = total + grads.reshape(s, *inputs.shape).sum(0)  # (N, ...)
    attributions = total * diff
    if not return_convergence_delta:
        return attributions
    return attributions, convergence_delta(forward, attributions, inputs, b, target)
