"""Negative log-likelihood losses of a Poisson and a Gaussian, as in ``torch.nn.functional``.

Written out from their formulas; re-exported by :mod:`fdl.losses`.
"""

from __future__ import annotations

import math

import torch

from fdl import _loss_common as _c

__all__ = ["gaussian_nll_loss", "poisson_nll_loss"]

Tensor = torch.Tensor


@_c.fill_doc
def poisson_nll_loss(
    input: Tensor,
    target: Tensor,
    log_input: bool = True,
    full: bool = False,
    size_average: bool | None = None,
    eps: float = 1e-8,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Poisson negative log-likelihood of ``target`` under the rate given by ``input``.

    ``log_input=True``: ``l = exp(input) - target * input`` (``input`` is the log-rate);
    ``log_input=False``: ``l = input - target * log(input + eps)``. With ``full=True`` the
    Stirling term ``target * log(target) - target + 0.5 * log(2 * pi * target)`` is added
    where ``target > 1`` (it is 0 elsewhere, with a zero gradient).

    Args:
        input: log-rates (or rates), any shape.
        target: counts, same shape as ``input``.
        log_input: whether ``input`` is the log of the rate.
        full: add the Stirling approximation of ``log(target!)``.
        size_average: deprecated, see ``reduction``.
        eps: keeps ``log(input + eps)`` finite when ``log_input=False``.
        reduce: deprecated, see ``reduction``.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.

    {returns}

    Example:
        >>> import torch
        >>> poisson_nll_loss(torch.tensor([0.0]), torch.tensor([2.0]))
        tensor(1.)
    """
    name = "poisson_nll_loss"
    reduction = _c.reduction_of(name, reduction, size_average, reduce, input=input, target=target)
    _c.check_same_shape(name, input=input, target=target)
    if log_input:
        loss = torch.exp(input) - target * input
    else:
        loss = input - target * torch.log(input + eps)
    if full:
        big = target > 1
        t = torch.where(big, target, torch.full_like(target, 2.0))  # a safe value where masked
        stirling = t * torch.log(t) - t + 0.5 * torch.log(2 * math.pi * t)
        loss = loss + torch.where(big, stirling, 0.0)
    return _c.reduce(loss, reduction)


def _gaussian_var_shape(input: Tensor, var: Tensor) -> Tensor:
    """``var`` shaped to broadcast against ``input`` under torch's rules, else ``ValueError``."""
    if var.shape == input.shape:
        return var  # heteroscedastic
    if input.shape[:-1] == var.shape:
        return var.unsqueeze(-1)  # one variance per row: (..., 1)
    if input.dim() == var.dim():
        mismatched = [v for x, v in zip(input.shape, var.shape, strict=True) if x != v]
        if sum(mismatched) == 1:
            return var  # one broadcast dimension of size 1
    raise ValueError(
        f"gaussian_nll_loss: var of shape {tuple(var.shape)} does not fit input of shape "
        f"{tuple(input.shape)} (use input's shape, input's shape without the last dimension, "
        "or input's shape with one dimension of size 1)"
    )


@_c.fill_doc
def gaussian_nll_loss(
    input: Tensor,
    target: Tensor,
    var: Tensor | float,
    full: bool = False,
    eps: float = 1e-6,
    reduction: str = "mean",
) -> Tensor:
    """Gaussian negative log-likelihood of ``target`` with mean ``input`` and variance ``var``.

    ``v = max(var, eps)`` (the clamp changes the value only: the gradient flows to ``var``
    unchanged, as in torch); ``l = 0.5 * (log(v) + (input - target)**2 / v)``, plus
    ``0.5 * log(2 * pi)`` with ``full=True``.

    Args:
        input: means, any shape.
        target: samples, same shape as ``input``.
        var: variances (non-negative): ``input``'s shape, that shape without the last
            dimension, that shape with one dimension of size 1, or a float.
        full: include the constant term.
        eps: lower bound of the variance.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.

    {returns}

    Example:
        >>> import torch
        >>> gaussian_nll_loss(torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([4.0]))
        tensor(1.1931)
    """
    name = "gaussian_nll_loss"
    _c.check_tensors(name, input=input, target=target)
    if isinstance(var, (int, float)) and not isinstance(var, bool):
        if var < 0:
            raise ValueError(f"{name}: var has negative entries, got {var}")
        var = torch.full_like(input, float(var))
    _c.check_tensors(name, var=var)
    assert isinstance(var, torch.Tensor)
    if _c.any_true(var < 0):
        raise ValueError(f"{name}: var has negative entries")
    var = _gaussian_var_shape(input, var)
    reduction = _c.reduction_of(name, reduction)
    v = var + (var.clamp_min(eps) - var).detach()  # value clamped, gradient straight through
    diff = input - target
    loss = 0.5 * (torch.log(v) + diff * diff / v)
    if full:
        loss = loss + 0.5 * math.log(2 * math.pi)
    return _c.reduce(loss, reduction)
