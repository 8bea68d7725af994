"""Projected gradient descent (Madry et al., 2018) in the L-inf and L2 balls."""

from __future__ import annotations

from collections.abc import Callable

import torch

import fdl.random
from fdl.robust._objective import input_gradient, per_example_view, scalar

__all__ = ["NORMS", "pgd", "random_start"]

Tensor = torch.Tensor

NORMS = ("inf", "2")
# torchattacks' defaults: PGD (L-inf) and PGDL2
_DEFAULTS = {"inf": {"eps": 8 / 255, "alpha": 2 / 255}, "2": {"eps": 1.0, "alpha": 0.2}}


def _norm_name(norm: str | int | float) -> str:
    name = {"inf": "inf", "linf": "inf", "2": "2", "l2": "2"}.get(str(norm).lower())
    if name is None and norm in (float("inf"), 2):
        name = "inf" if norm == float("inf") else "2"
    if name is None:
        raise ValueError(f"norm must be 'inf' or '2', got {norm!r}")
    return name


def _l2(t: Tensor) -> Tensor:
    """Per-example L2 norm ``(N, ...) -> (N,)``."""
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), ord=2, dim=1)


def random_start(
    x: Tensor, *, eps: float | Tensor, key: Tensor, norm: str | int | float = "inf"
) -> Tensor:
    """The perturbation PGD starts from (before clamping ``x + delta`` to the valid range).

    * ``"inf"``: ``delta ~ U[-eps, eps)`` per entry: ``fdl.random.uniform(key, x.shape,
      -eps, eps)`` (torchattacks' ``torch.empty_like(x).uniform_(-eps, eps)``).
    * ``"2"``: with ``k_dir, k_radius = fdl.random.split(key)``,
      ``z ~ N(0, 1)`` of ``x``'s shape from ``k_dir``, ``r ~ U[0, 1)`` per example
      from ``k_radius``: ``delta = z * (r / ||z||_2 * eps)``, so ``||delta||_2 = r eps``
      (torchattacks' PGDL2 rule: the radius, not the volume, is uniform).

    Example:
        >>> import torch, fdl
        >>> d = random_start(torch.zeros(4, 3), eps=0.1, key=fdl.random.key(0), norm="2")
        >>> bool((d.norm(dim=1) <= 0.1).all())
        True
    """
    name = _norm_name(norm)
    e = scalar(eps, x)
    if name == "inf":
        return fdl.random.uniform(key, x.shape, -e, e, dtype=x.dtype).to(x.device)
    k_dir, k_radius = fdl.random.split(key)
    z = fdl.random.normal(k_dir, x.shape, dtype=x.dtype).to(x.device)
    r = fdl.random.uniform(k_radius, (x.shape[0],), dtype=x.dtype).to(x.device)
    scale = r / _l2(z) * e  # (N,)
    return z * per_example_view(scale, x.ndim)


_random_start = random_start  # ``pgd``'s flag of the same name shadows it there


def pgd(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    eps: float | Tensor | None = None,
    alpha: float | Tensor | None = None,
    steps: int = 10,
    key: Tensor | None = None,
    norm: str | int | float = "inf",
    random_start: bool = True,
    targeted: bool = False,
    clamp: tuple[float, float] = (0.0, 1.0),
    eps_for_division: float = 1e-10,
) -> Tensor:
    """Projected gradient ascent on the cross-entropy inside an eps-ball around ``x``.

    From ``x_0 = clamp(x + delta_0)`` (:func:`random_start`, or ``x_0 = x``),
    with ``g = d cost / dx (x_k)`` (``cost = CE``, or ``-CE`` when ``targeted``):

    * ``"inf"``: ``x' = x_k + alpha * sign(g)``;
      ``x_{k+1} = clamp(x + clip(x' - x, -eps, eps), lo, hi)``.
    * ``"2"``: ``x' = x_k + alpha * g / (||g||_2 + eps_for_division)``;
      ``d = x' - x``; ``x_{k+1} = clamp(x + d * min(eps / ||d||_2, 1), lo, hi)``.

    Norms are per example. Both are torchattacks' ``PGD`` / ``PGDL2`` step for step.

    Args:
        forward: a pure function from a batch in ``[lo, hi]`` to logits.
        x: the clean batch ``(N, ...)``.
        y: ``(N,)`` labels (targets if ``targeted``).
        eps: the ball's radius (default: torchattacks' ``8/255`` for L-inf, ``1.0`` for L2).
        alpha: the step size (default ``2/255`` for L-inf, ``0.2`` for L2).
        steps: number of steps (a Python int: the loop is unrolled when compiled).
        key: an ``fdl.random`` key for the random start (required when ``random_start``).
        norm: ``"inf"`` or ``"2"``.
        random_start: start from a random point of the ball.
        targeted: descend towards ``y``.
        clamp: the valid input range ``(lo, hi)``.
        eps_for_division: added to the gradient norm (L2), as torchattacks does.

    Returns:
        The adversarial batch, shaped like ``x``.

    Example:
        >>> import torch, fdl
        >>> w = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        >>> x = torch.tensor([[0.5, 0.5]])
        >>> adv = fdl.robust.pgd(lambda v: v @ w.T, x, torch.tensor([0]), eps=0.1, alpha=0.05,
        ...                      steps=5, key=fdl.random.key(0))
        >>> adv
        tensor([[0.4000, 0.6000]])
    """
    name = _norm_name(norm)
    e = scalar(_DEFAULTS[name]["eps"] if eps is None else eps, x)
    a = scalar(_DEFAULTS[name]["alpha"] if alpha is None else alpha, x)
    lo, hi = clamp
    adv = x
    if random_start:
        if key is None:
            raise ValueError("pgd with random_start=True needs key=fdl.random.key(seed)")
        adv = torch.clamp(x + _random_start(x, eps=e, key=key, norm=name), min=lo, max=hi)
    for _ in range(steps):
        grad = input_gradient(forward, adv, y, targeted)
        if name == "inf":
            stepped = adv + a * grad.sign()
            delta = torch.clamp(stepped - x, min=-e, max=e)
        else:
            unit = grad / per_example_view(_l2(grad) + eps_for_division, x.ndim)
            delta = adv + a * unit - x
            factor = torch.minimum(e / _l2(delta), torch.ones((), dtype=x.dtype))
            delta = delta * per_example_view(factor, x.ndim)
        adv = torch.clamp(x + delta, min=lo, max=hi)
    return adv
