"""Clipping blocks: by value (``clip_grad_value_``) and by global norm (``clip_grad_norm_``)."""

from __future__ import annotations

import torch

from fdl.optim import _common as C
from fdl.optim import _foreach as F
from fdl.optim.base import GradientTransformation

__all__ = ["clip", "clip_by_global_norm"]

Tensor = torch.Tensor


def clip(max_delta: float) -> GradientTransformation:
    r"""Clip every element to ``[-max_delta, max_delta]``: :math:`u = \min(\max(g, -c), c)`.

    Same result as ``torch.nn.utils.clip_grad_value_(params, clip_value=max_delta)``.

    Args:
        max_delta: the bound ``c`` (>= 0).

    Returns:
        A stateless transformation.

    Example:
        >>> import torch
        >>> tx = clip(1.0)
        >>> tx.update({"w": torch.tensor([-3.0, 0.5])}, tx.init(None))[0]
        {'w': tensor([-1.0000,  0.5000])}
    """
    C.check_nonneg("max_delta", max_delta)
    return C.stateless("clip", lambda g, p: F.clamp(g, -max_delta, max_delta))


def clip_by_global_norm(
    max_norm: float, norm_type: float = 2.0, *, error_if_nonfinite: bool = False
) -> GradientTransformation:
    r"""Rescale the updates when their global norm exceeds ``max_norm``.

    .. math::
        N = \Big\| \big(\|g_1\|_p, \dots, \|g_n\|_p\big) \Big\|_p, \qquad
        u = g \cdot \min\!\Big(1, \frac{c}{N + 10^{-6}}\Big)

    with ``c = max_norm`` and ``p = norm_type``: the same result as
    ``torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)`` (including
    its ``1e-6`` and multiplying even when no clipping occurs).

    Args:
        max_norm: the largest allowed global norm ``c``.
        norm_type: the norm order ``p`` (``float('inf')`` for the max norm).
        error_if_nonfinite: raise ``RuntimeError`` when ``N`` is NaN or infinite,
            as torch does. Reading ``N`` back costs a host sync, and compiled code
            cannot raise on a value, so this works eagerly only (building the
            update under ``torch.compile`` with it raises). To skip bad steps
            inside compiled code, combine with :func:`apply_if_finite` instead.

    Returns:
        A stateless transformation.

    Example:
        >>> import torch
        >>> tx = clip_by_global_norm(1.0)
        >>> u, _ = tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init(None))
        >>> round(float(torch.linalg.vector_norm(u["w"])), 4)
        1.0
    """
    C.check_nonneg("max_norm", max_norm)
    ord = float(norm_type)

    def clipped(g: list[Tensor], p: object) -> list[Tensor]:
        if not g:
            return g
        total = torch.linalg.vector_norm(torch.stack(F.norms(g, ord)), ord)
        if error_if_nonfinite:
            _raise_if_nonfinite(total, ord)
        return F.scale(g, torch.clamp(max_norm / (total + 1e-6), max=1.0))

    return C.stateless("clip_by_global_norm", clipped)


def _raise_if_nonfinite(total: Tensor, ord: float) -> None:
    """torch's error for a non-finite total norm (eager only: it reads the norm back)."""
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "clip_by_global_norm(error_if_nonfinite=True) cannot run under "
            "torch.compile: it reads the norm back to raise; use apply_if_finite"
        )
    if not bool(torch.isfinite(total)):
        raise RuntimeError(
            f"The total norm of order {ord} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale "
            "the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`"
        )
