"""Distances and norms: ``pairwise_distance``, ``cosine_similarity``, ``pdist``, ``normalize``.

Both are written out from their formulas, with torch's ``eps`` conventions and torch's
zero gradient where a norm is exactly zero.
"""

from __future__ import annotations

import math

import torch

__all__ = ["cosine_similarity", "normalize", "pairwise_distance", "pdist"]

Tensor = torch.Tensor


def _check_tensors(name: str, x1: object, x2: object) -> None:
    for arg, value in (("x1", x1), ("x2", x2)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(value).__name__}")


def _sqrt_safe(s: Tensor) -> Tensor:
    """``sqrt(s)`` for ``s >= 0`` whose gradient is 0 (not inf) where ``s == 0``."""
    positive = s > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, s, torch.ones_like(s))), 0.0)


def vector_norm(d: Tensor, p: float, dim: int, keepdim: bool = False) -> Tensor:
    """The ``p``-norm of ``d`` along ``dim``, written out.

    ``p = 2``: ``sqrt(sum(d**2))``; ``p = inf``: ``max |d|``; ``p = -inf``: ``min |d|``;
    ``p = 0``: the count of non-zeros; otherwise ``sum(|d|**p) ** (1/p)``. Where the norm
    is 0 the gradient is 0, as in torch.
    """
    if p == 2:
        return _sqrt_safe((d * d).sum(dim, keepdim=keepdim))
    a = d.abs()
    if p == math.inf:
        return a.amax(dim, keepdim=keepdim)
    if p == -math.inf:
        return a.amin(dim, keepdim=keepdim)
    if p == 0:
        return ((d != 0).to(d.dtype) + 0.0 * d).sum(dim, keepdim=keepdim)  # gradient 0
    s = (a**p).sum(dim, keepdim=keepdim)
    positive = s > 0
    return torch.where(positive, torch.where(positive, s, torch.ones_like(s)) ** (1.0 / p), 0.0)


def pairwise_distance(
    x1: Tensor, x2: Tensor, p: float = 2.0, eps: float = 1e-6, keepdim: bool = False
) -> Tensor:
    """The ``p``-norm distance between rows: ``||x1 - x2 + eps||_p`` along the last dimension.

    The last dimension is that of the larger-rank input; ``x1`` and ``x2`` broadcast.
    ``eps`` is added to the difference (not to the norm), as torch does.

    Args:
        x1: ``(N, D)`` or ``(D,)``.
        x2: broadcastable against ``x1``.
        p: the norm degree (``inf``, ``-inf`` and ``0`` as in ``torch.norm``).
        eps: added to every difference to keep the norm's gradient finite.
        keepdim: keep the reduced dimension with size 1.

    Returns:
        ``(N,)`` (or ``()`` for 1-d inputs).

    Example:
        >>> import torch
        >>> pairwise_distance(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 4.0]]), eps=0.0)
        tensor([5.])
    """
    _check_tensors("pairwise_distance", x1, x2)
    dim = max(x1.dim(), x2.dim()) - 1
    if dim < 0:
        return (x1 - x2 + eps).abs()  # 0-d inputs: the distance of two scalars
    return vector_norm(x1 - x2 + eps, p, dim, keepdim)


def cosine_similarity(x1: Tensor, x2: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Cosine of the angle between ``x1`` and ``x2`` along ``dim``.

    ``y = sum((x1 / max(||x1||, eps)) * (x2 / max(||x2||, eps)), dim)``. As in torch, the
    clamp to ``eps`` changes the value only: the gradient flows as if the norm were not
    clamped.

    Args:
        x1: any shape.
        x2: broadcastable against ``x1``.
        dim: the dimension holding the vectors.
        eps: lower bound of each norm.

    Returns:
        The broadcast shape without ``dim``.

    Example:
        >>> import torch
        >>> cosine_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))
        tensor([0.7071])
    """
    _check_tensors("cosine_similarity", x1, x2)
    x1, x2 = torch.broadcast_tensors(x1, x2)
    n1 = _sqrt_safe((x1 * x1).sum(dim, keepdim=True))
    n2 = _sqrt_safe((x2 * x2).sum(dim, keepdim=True))
    n1 = n1 + (n1.clamp_min(eps) - n1).detach()  # value clamped, gradient straight through
    n2 = n2 + (n2.clamp_min(eps) - n2).detach()
    return ((x1 / n1) * (x2 / n2)).sum(dim)


def pdist(input: Tensor, p: float = 2.0) -> Tensor:
    """Distances between every pair of rows: ``||x_i - x_j||_p`` for ``i < j``, row-major.

    Args:
        input: ``(N, M)``.
        p: the norm degree.

    Returns:
        ``(N (N - 1) / 2,)``.

    Example:
        >>> import torch
        >>> pdist(torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]]))
        tensor([5.0000, 1.0000, 4.2426])
    """
    if not isinstance(input, torch.Tensor) or input.dim() != 2:
        raise ValueError("pdist: input must be a 2-d tensor (N, M)")
    i, j = torch.triu_indices(input.shape[0], input.shape[0], offset=1, device=input.device)
    return vector_norm(input[i] - input[j], p, 1)  # (N (N - 1) / 2,)


def normalize(
    input: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out: Tensor | None = None
) -> Tensor:
    """``y = input / max(||input||_p, eps)`` along ``dim`` (the clamp is a true clamp).

    Example:
        >>> import torch
        >>> normalize(torch.tensor([[3.0, 4.0]]))
        tensor([[0.6000, 0.8000]])
    """
    if out is not None:
        raise ValueError("normalize: out= is not supported (fdl functions return new tensors)")
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"normalize: input must be a torch.Tensor, got {type(input).__name__}")
    return input / vector_norm(input, p, dim, keepdim=True).clamp_min(eps)
