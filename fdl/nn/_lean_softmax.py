r"""Softmax and log-softmax with lean autograd: the backward keeps the output only.

Written as plain tensor ops, eager autograd would keep every intermediate of
``e = exp(x - m); y = e / sum(e)`` (``e`` for the exponential, ``e`` and the
row sums for the division, then ``y`` for whatever consumes it). Both
functions here are a :class:`torch.autograd.Function` whose forward is the
formula and whose backward is written out on the saved output ``y``:

* softmax: :math:`\partial x = y \odot (g - \textstyle\sum_d y \odot g)`;
* log-softmax: :math:`\partial x = g - e^{y} \textstyle\sum_d g`.

The backward is itself written in differentiable torch ops (double backward
works), ``jvp`` gives forward mode (``t_y = y ⊙ (t − Σ y ⊙ t)`` and
``t_y = t − Σ e^y ⊙ t``) and ``generate_vmap_rule`` lets ``torch.func.vmap``
batch them. Under ``torch.compile`` the plain formula is used: the compiler
chooses what to keep and what to recompute itself.
"""

from __future__ import annotations

from typing import Any

import torch

Tensor = torch.Tensor


def eager() -> bool:
    """Whether the lean autograd functions apply: on the eager path, not under compile."""
    return not torch.compiler.is_compiling()


def _stable_max(input: Tensor, dim: int) -> Tensor:
    """Row maximum used as the shift: detached, and 0 where the row has no finite maximum."""
    m = torch.amax(input.detach(), dim=dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def softmax_formula(input: Tensor, d: int, safe: bool = False) -> Tensor:
    """``e = exp(input - m)``, ``e / sum(e, d)`` in plain (fully recorded) tensor ops.

    ``safe``: a row that is all ``-inf`` gives zeros. Its shift is 0 (no finite maximum),
    so its ``e`` is all 0 and its sum is exactly 0, while every other row's sum is at
    least 1 (its maximum's ``exp(0)``): dividing those rows' ``e`` by 1 instead gives 0.
    """
    e = torch.exp(input - _stable_max(input, d))
    total = torch.sum(e, dim=d, keepdim=True)
    if safe:
        total = torch.where(total == 0, torch.ones_like(total), total)
    return e / total


def log_softmax_formula(input: Tensor, d: int) -> Tensor:
    """``z = input - m``, ``z - log(sum(exp(z), d))`` in plain tensor ops."""
    z = input - _stable_max(input, d)
    return z - torch.log(torch.sum(torch.exp(z), dim=d, keepdim=True))


class _SavesOutput(torch.autograd.Function):
    """A function of ``(input, d, ...)`` whose backward and ``jvp`` read only its output."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:  # type: ignore[override]
        ctx.d = inputs[1]
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)


class _Softmax(_SavesOutput):
    """``softmax_formula`` saving only its output."""

    @staticmethod
    def forward(input: Tensor, d: int, safe: bool) -> Tensor:  # type: ignore[override]
        return softmax_formula(input, d, safe)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return y * (g - torch.sum(y * g, dim=ctx.d, keepdim=True)), None, None

    @staticmethod
    def jvp(ctx: Any, t: Tensor, _d: Any, _safe: Any) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return y * (t - torch.sum(y * t, dim=ctx.d, keepdim=True))


class _LogSoftmax(_SavesOutput):
    """``log_softmax_formula`` saving only its output."""

    @staticmethod
    def forward(input: Tensor, d: int) -> Tensor:  # type: ignore[override]
        return log_softmax_formula(input, d)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return g - torch.exp(y) * torch.sum(g, dim=ctx.d, keepdim=True), None

    @staticmethod
    def jvp(ctx: Any, t: Tensor, _: Any) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return t - torch.sum(torch.exp(y) * t, dim=ctx.d, keepdim=True)


def softmax(input: Tensor, d: int, safe: bool = False) -> Tensor:
    """Softmax along ``d``: the lean autograd function eagerly, the formula under compile.

    ``safe``: rows that are all ``-inf`` give zeros (see :func:`softmax_formula`).
    """
    if eager():
        return _Softmax.apply(input, d, safe)
    return softmax_formula(input, d, safe)


def log_softmax(input: Tensor, d: int) -> Tensor:
    """Log-softmax along ``d``: the lean autograd function eagerly, the formula under compile."""
    return _LogSoftmax.apply(input, d) if eager() else log_softmax_formula(input, d)
