"""Carlini-Wagner L2 attack (Carlini and Wagner, 2017), torchattacks' fixed-``c`` variant."""

from __future__ import annotations

from collections.abc import Callable

import torch

import fdl.optim
from fdl.robust._objective import per_example_view, scalar

__all__ = ["cw", "cw_margin"]

Tensor = torch.Tensor


def cw_margin(
    logits: Tensor, y: Tensor, *, kappa: float | Tensor = 0.0, targeted: bool = False
) -> Tensor:
    """The CW objective per example: ``max(z_y - max_{j != y} z_j, -kappa)`` (untargeted)
    or ``max(max_{j != y} z_j - z_y, -kappa)`` (targeted), ``(N, C) -> (N,)``.

    Note:
        torchattacks takes ``max((1 - onehot) * z)`` and ``max(onehot * z)``, whose
        zeroed entries compete in the max: it equals this margin when all logits
        are positive (both are invariant to a shift of the logits only here).
    """
    real = logits.gather(1, y.reshape(-1, 1)).squeeze(1)  # (N,)
    is_y = torch.arange(logits.shape[1], device=logits.device) == y.reshape(-1, 1)  # (N, C)
    other = logits.masked_fill(is_y, float("-inf")).amax(1)  # (N,)
    margin = other - real if targeted else real - other
    return torch.clamp(margin, min=-scalar(kappa, logits))


def cw(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    c: float | Tensor = 1.0,
    kappa: float | Tensor = 0.0,
    steps: int = 50,
    lr: float = 0.01,
    targeted: bool = False,
) -> Tensor:
    """CW-L2: Adam on ``w`` with ``x_adv = (tanh(w) + 1) / 2``, keeping each example's
    smallest successful perturbation.

    ``w_0 = atanh(2x - 1)``; each step minimises
    ``cost = sum_i ||x_adv_i - x_i||_2^2 + c * sum_i cw_margin(forward(x_adv), y)_i``
    with Adam(``lr``) (``fdl.optim.adam``). After step ``k`` an example's best is
    replaced by ``x_adv_i`` (the point the step differentiated) when it is
    misclassified (untargeted: ``argmax != y``; targeted: ``argmax == y``) and its
    squared distance is below the best so far. Every ``max(steps // 10, 1)`` steps,
    if ``cost`` rose since the last check the attack stops: later steps change
    nothing (computed and discarded, so the function stays one static graph).

    Args:
        forward: a pure function from a batch in ``[0, 1]`` to logits.
        x: the clean batch in ``[0, 1]``.
        y: ``(N,)`` labels (targets if ``targeted``).
        c: weight of the margin term.
        kappa: confidence: the margin is floored at ``-kappa``.
        steps: Adam steps.
        lr: Adam's learning rate.
        targeted: reach class ``y`` instead of leaving it.

    Returns:
        The adversarial batch (the clean example where no success was found), in ``[0, 1]``.

    Note:
        torchattacks returns from the loop at the early stop; here the remaining
        steps run without effect. Its margin differs when logits are negative
        (see :func:`cw_margin`).

    Example:
        >>> import torch, fdl
        >>> w = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        >>> x = torch.tensor([[0.6, 0.4]])
        >>> adv = fdl.robust.cw(lambda v: v @ w.T, x, torch.tensor([0]), c=10.0, steps=100, lr=0.05)
        >>> int((adv @ w.T).argmax(1))          # no longer class 0
        1
    """
    t = torch.clamp(x * 2 - 1, min=-1, max=1)
    w = 0.5 * torch.log((1 + t) / (1 - t))  # atanh(2x - 1)
    opt = fdl.optim.adam(lr=lr)
    state = opt.init(w)
    c_t = scalar(c, x)

    def cost_fn(w: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        adv = 0.5 * (torch.tanh(w) + 1)
        l2 = ((adv - x) ** 2).reshape(x.shape[0], -1).sum(1)  # (N,)
        logits = forward(adv)
        cost = l2.sum() + c_t * cw_margin(logits, y, kappa=kappa, targeted=targeted).sum()
        return cost, (adv, l2, logits)

    best_adv = x
    best_l2 = torch.full((x.shape[0],), 1e10, dtype=x.dtype, device=x.device)
    prev_cost = torch.tensor(1e10, dtype=x.dtype, device=x.device)
    running = torch.ones((), dtype=torch.bool, device=x.device)
    check_every = max(steps // 10, 1)
    for step in range(steps):
        grad, (cost, (adv, l2, logits)) = torch.func.grad_and_value(cost_fn, has_aux=True)(w)
        updates, state = opt.update(grad, state, w)
        w = fdl.optim.apply_updates(w, updates)
        pred = logits.argmax(1)
        success = pred == y if targeted else pred != y
        better = (success & (best_l2 > l2) & running).to(x.dtype)  # (N,)
        best_l2 = better * l2 + (1 - better) * best_l2
        better = per_example_view(better, x.ndim)
        best_adv = better * adv + (1 - better) * best_adv
        if step % check_every == 0:
            stop = cost > prev_cost
            prev_cost = torch.where(running & ~stop, cost, prev_cost)
            running = running & ~stop
    return best_adv
