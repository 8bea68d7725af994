r"""Layer normalisation's standardisation with lean autograd: the backward keeps ``x̂, r``.

With ``D`` the normalised dimensions (``N`` elements), ``μ = mean_D(x)``,
``r = 1 / sqrt(var_D(x) + eps)`` (biased variance) and ``x̂ = (x − μ) r``.
Written as plain tensor ops, eager autograd keeps ``x`` (for the variance),
``x − μ`` and ``r`` (for the product) besides ``x̂``. Here the standardisation
is a :class:`torch.autograd.Function` returning ``(x̂, r)`` and saving exactly
those two outputs (``x̂`` is the tensor the affine ``x̂ · weight`` keeps anyway).
Its backward is the closed form

.. math::

    \partial x = r \left(g - \operatorname{mean}_D g
        - \hat x \operatorname{mean}_D(g \hat x)\right)
        - \frac{r^2}{N}\, g_r\, \hat x,

written in differentiable torch ops on the saved outputs (so double backward
works); ``jvp`` is its forward-mode twin
``t_x̂ = r (t − mean_D t − x̂ mean_D(x̂ t))``, ``t_r = −r² mean_D(x̂ t)``, and
``generate_vmap_rule`` batches it under ``torch.func.vmap``. The affine map
stays outside (per-sample rules see ``x̂ · weight`` and ``+ bias``). Under
``torch.compile`` the plain formula is used.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fdl.nn._lean_softmax import eager

Tensor = torch.Tensor


def standardize_formula(input: Tensor, dims: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor]:
    """``(x̂, r)`` in plain (fully recorded) tensor ops."""
    var, mu = torch.var_mean(input, dim=dims, correction=0, keepdim=True)  # biased variance
    rstd = torch.rsqrt(var + eps)
    return (input - mu) * rstd, rstd


class _Standardize(torch.autograd.Function):
    """``standardize_formula`` saving only its two outputs."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, dims: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return standardize_formula(input, dims, eps)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:  # type: ignore[override]
        ctx.dims = inputs[1]
        ctx.n = math.prod(inputs[0].shape[d] for d in inputs[1])
        ctx.save_for_backward(*output)
        ctx.save_for_forward(*output)

    @staticmethod
    def backward(ctx: Any, g: Tensor, g_rstd: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        xhat, rstd = ctx.saved_tensors
        dims = ctx.dims
        mean_g = torch.mean(g, dim=dims, keepdim=True)
        mean_gx = torch.mean(g * xhat, dim=dims, keepdim=True)
        gx = rstd * (g - mean_g - xhat * mean_gx)
        return gx - (g_rstd * rstd * rstd / ctx.n) * xhat, None, None

    @staticmethod
    def jvp(ctx: Any, t: Tensor, _dims: Any, _eps: Any) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        xhat, rstd = ctx.saved_tensors
        dims = ctx.dims
        mean_xt = torch.mean(xhat * t, dim=dims, keepdim=True)
        t_xhat = rstd * (t - torch.mean(t, dim=dims, keepdim=True) - xhat * mean_xt)
        return t_xhat, -rstd * rstd * mean_xt


def standardize(input: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """``x̂`` over ``dims``: the lean autograd function eagerly, the formula under compile."""
    if eager():
        return _Standardize.apply(input, dims, eps)[0]
    return standardize_formula(input, dims, eps)[0]
