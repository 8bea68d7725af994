"""Loss functions with ``torch.nn.functional``'s names, arguments and defaults.

Every loss is written out from its formula (``docs/losses.md`` has each one in
LaTeX); the class-probability losses go through the stable
:func:`fdl.nn.functional.log_softmax` / :func:`~fdl.nn.functional.logsigmoid`.
Values and gradients equal torch's (see ``tests/test_losses.py``).

Common arguments:

``reduction``
    ``'none'`` (per-element losses), ``'sum'`` or ``'mean'`` (``kl_div`` also
    accepts ``'batchmean'``). The deprecated ``size_average``/``reduce`` flags
    are honoured as in torch.

Where fdl differs from torch:

* ``input`` and ``target`` of the elementwise losses must have the same shape
  (torch broadcasts them with a warning that the result is probably wrong).
* Values torch rejects (class indices out of range, BCE inputs or targets
  outside ``[0, 1]``) raise ``ValueError`` naming the argument. These checks read
  tensor values, so they run eagerly only (``fdl._eager.validating()``); inside
  ``torch.compile``, ``vmap`` or on the meta device they are skipped and the
  formula runs on the values as given (see ``docs/losses.md``).
"""

from __future__ import annotations

from typing import Any

import torch

from fdl import _loss_common as _c
from fdl.nn.functional import log_softmax, logsigmoid

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "huber_loss",
    "kl_div",
    "l1_loss",
    "mse_loss",
    "nll_loss",
    "smooth_l1_loss",
]

Tensor = torch.Tensor

# --------------------------------------------------------------------------- helpers


def _reduce_weighted(loss: Tensor, weight: Tensor | None, reduction: str) -> Tensor:
    # per-element weights; 'mean' becomes sum(weight * loss) / sum(weight), as torch does
    if weight is None:
        return _c.reduce(loss, reduction)
    loss = loss * weight
    if reduction == "mean":
        return loss.sum() / weight.sum()
    return _c.reduce(loss, reduction)


def _check_same_shape(name: str, input: Tensor, other: Tensor, arg: str = "target") -> None:
    """``ValueError`` unless ``other`` (the argument called ``arg``) has ``input``'s shape."""
    if other.shape != input.shape:
        raise ValueError(
            f"{name}: {arg} shape {tuple(other.shape)} must equal input shape {tuple(input.shape)}"
        )


def _elementwise_args(name: str, input: Tensor, target: Tensor, weight: Tensor | None) -> None:
    """The checks of the elementwise losses: tensors, equal shapes, a same-shape weight."""
    _c.check_tensors(name, input=input, target=target, weight=weight)
    _check_same_shape(name, input, target)
    if weight is not None:
        _check_same_shape(name, input, weight, "weight")


# --------------------------------------------------------------------------- regression


@_c.fill_doc
def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Mean squared error.

    ``l = (input - target)**2`` (times ``weight`` if given). ``'mean'`` is
    ``sum(l) / l.numel()``, or ``sum(weight * (input - target)**2) / sum(weight)``
    with a weight, as in torch.

    Args:
        input: predictions, any shape.
        target: same shape as ``input``.
        {reduction_args}
        weight: optional per-element weights, same shape as ``input``.

    Returns:
        The reduced loss (a scalar), or per-element losses for ``'none'``.

    Example:
        >>> import torch
        >>> mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))
        tensor(2.5000)
    """
    reduction = _c.reduction_of("mse_loss", reduction, size_average, reduce)
    _elementwise_args("mse_loss", input, target, weight)
    diff = input - target
    loss = diff * diff
    return _reduce_weighted(loss, weight, reduction)


@_c.fill_doc
def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Mean absolute error.

    ``l = |input - target|`` (times ``weight`` if given); ``'mean'`` with a
    weight is ``sum(weight * l) / sum(weight)``, as in torch.

    Args:
        input, target, size_average, reduce, reduction, weight: as in :func:`mse_loss`.

    {returns}

    Example:
        >>> import torch
        >>> l1_loss(torch.tensor([1.0, -3.0]), torch.tensor([0.0, 0.0]))
        tensor(2.)
    """
    reduction = _c.reduction_of("l1_loss", reduction, size_average, reduce)
    _elementwise_args("l1_loss", input, target, weight)
    loss = torch.abs(input - target)
    return _reduce_weighted(loss, weight, reduction)


@_c.fill_doc
def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    beta: float = 1.0,
) -> Tensor:
    """Smooth L1 loss: quadratic below ``beta``, linear above.

    With ``d = |input - target|``:
    ``l = 0.5 * d**2 / beta`` if ``d < beta`` else ``d - 0.5 * beta``;
    ``beta == 0`` gives the L1 loss.

    Args:
        input: predictions, any shape.
        target: same shape as ``input``.
        {reduction_args}
        beta: the switch point, ``>= 0``.

    {returns}

    Example:
        >>> import torch
        >>> smooth_l1_loss(torch.tensor([0.5, 3.0]), torch.tensor([0.0, 0.0]), reduction="none")
        tensor([0.1250, 2.5000])
    """
    reduction = _c.reduction_of(
        "smooth_l1_loss", reduction, size_average, reduce, input=input, target=target
    )
    _check_same_shape("smooth_l1_loss", input, target)
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    d = torch.abs(input - target)
    if beta == 0:
        return _c.reduce(d, reduction)
    loss = torch.where(d < beta, (0.5 / beta) * d * d, d - 0.5 * beta)
    return _c.reduce(loss, reduction)


@_c.fill_doc
def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Huber loss: quadratic below ``delta``, linear (slope ``delta``) above.

    With ``d = |input - target|``:
    ``l = 0.5 * d**2`` if ``d < delta`` else ``delta * (d - 0.5 * delta)``,
    times ``weight`` if given. ``'mean'`` is ``mean(l)`` even with a weight (as
    in torch; unlike ``mse_loss`` it does not divide by ``sum(weight)``).

    Args:
        input: predictions, any shape.
        target: same shape as ``input``.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        delta: the switch point, ``> 0``.
        weight: optional per-element weights, same shape as ``input``.

    {returns}

    Example:
        >>> import torch
        >>> huber_loss(torch.tensor([0.5, 3.0]), torch.tensor([0.0, 0.0]), reduction="none")
        tensor([0.1250, 2.5000])
    """
    reduction = _c.reduction_of("huber_loss", reduction)
    _elementwise_args("huber_loss", input, target, weight)
    if delta <= 0:
        raise ValueError(f"huber_loss: delta must be > 0, got {delta}")
    d = torch.abs(input - target)
    loss = torch.where(d < delta, 0.5 * d * d, delta * (d - 0.5 * delta))
    if weight is not None:
        loss = loss * weight
    return _c.reduce(loss, reduction)


# --------------------------------------------------------------------------- binary


# torch's floor on p * (1 - p) in the BCE gradient: 1e-12 rounded to float32
_BCE_EPS = 9.999999960041972e-13


class _BinaryCrossEntropy(torch.autograd.Function):
    """Elementwise ``-(t * max(log p, -100) + (1 - t) * max(log(1 - p), -100))``.

    The backward is torch's: ``(p - t) / max(p * (1 - p), 1e-12)`` for ``p`` and
    ``-(log p - log(1 - p))`` for ``t``, which stays finite at ``p`` in
    ``{0, 1}`` where the clamped formula's own derivative would not.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, target: Tensor) -> Tensor:
        log_p = torch.clamp_min(torch.log(input), -100.0)
        log_q = torch.clamp_min(torch.log1p(-input), -100.0)
        return -(target * log_p + (1 - target) * log_q)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        input, target = ctx.saved_tensors
        grad_input = grad * (input - target) / torch.clamp_min(input * (1 - input), _BCE_EPS)
        grad_target = -grad * (torch.log(input) - torch.log1p(-input))
        return grad_input, grad_target


@_c.fill_doc
def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Binary cross-entropy between probabilities ``input`` and targets in ``[0, 1]``.

    ``l = -weight * (target * max(log(input), -100)
    + (1 - target) * max(log(1 - input), -100))``; the clamp at ``-100`` is
    torch's, so ``input`` of exactly 0 or 1 gives a finite loss.

    Note:
        The gradient is torch's closed form
        ``weight * (input - target) / max(input * (1 - input), 1e-12)``,
        not the derivative of the clamped expression.

    Args:
        input: probabilities in ``[0, 1]``, any shape.
        target: same shape as ``input``.
        weight: optional weights broadcastable to ``input``'s shape.
        size_average: deprecated, see ``reduction``.
        reduce: deprecated, see ``reduction``.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'`` (``'mean'`` divides by
            the number of elements, not by the weights).

    {returns}

    Example:
        >>> import torch
        >>> p, t = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
        >>> binary_cross_entropy(p, t, reduction="none")
        tensor([100.0000,   0.6931])
    """
    name = "binary_cross_entropy"
    reduction = _c.reduction_of(
        name, reduction, size_average, reduce, input=input, target=target, weight=weight
    )
    _check_same_shape(name, input, target)
    if weight is not None:
        _check_broadcast_weight(name, input, weight, "weight")
    for arg, value in (("input", input), ("target", target)):
        if _c.any_true(~((value >= 0) & (value <= 1))):  # NaN fails too, as in torch
            raise ValueError(f"{name}: every element of {arg} must be in [0, 1]")
    loss = _BinaryCrossEntropy.apply(input, target)
    if weight is not None:
        loss = loss * weight
    return _c.reduce(loss, reduction)


def _check_broadcast_weight(name: str, input: Tensor, weight: Tensor, arg: str) -> None:
    try:
        shape = torch.broadcast_shapes(input.shape, weight.shape)
    except RuntimeError:
        shape = None
    if shape != input.shape:
        raise ValueError(
            f"{name}: {arg} of shape {tuple(weight.shape)} does not broadcast to the input "
            f"shape {tuple(input.shape)}"
        )


@_c.fill_doc
def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy on logits, stable for any logit.

    With ``lw = 1 + (pos_weight - 1) * target`` (``1`` without ``pos_weight``):
    ``l = weight * ((1 - target) * input - lw * logsigmoid(input))``, which is
    ``-weight * (pos_weight * target * log(sigmoid(input))
    + (1 - target) * log(1 - sigmoid(input)))``.

    Args:
        input: logits, any shape.
        target: same shape as ``input``, values in ``[0, 1]``.
        weight: optional weights broadcastable to ``input``'s shape.
        {reduction_args}
        pos_weight: optional weight of positive examples, broadcastable to
            ``input``'s shape (typically ``(C,)`` for the last dimension).

    {returns}

    Example:
        >>> import torch
        >>> binary_cross_entropy_with_logits(torch.tensor([100.0, 0.0]), torch.tensor([0.0, 1.0]),
        ...                                  reduction="none")
        tensor([100.0000,   0.6931])
    """
    name = "binary_cross_entropy_with_logits"
    reduction = _c.reduction_of(
        name,
        reduction,
        size_average,
        reduce,
        input=input,
        target=target,
        weight=weight,
        pos_weight=pos_weight,
    )
    _check_same_shape(name, input, target)
    if weight is not None:
        _check_broadcast_weight(name, input, weight, "weight")
    if pos_weight is not None:
        _check_broadcast_weight(name, input, pos_weight, "pos_weight")
        log_weight = 1 + (pos_weight - 1) * target
    else:
        log_weight = torch.ones((), dtype=input.dtype, device=input.device)
    loss = (1 - target) * input - log_weight * logsigmoid(input)
    if weight is not None:
        loss = loss * weight
    return _c.reduce(loss, reduction)


# --------------------------------------------------------------------------- classification


def _class_layout(name: str, input: Tensor) -> tuple[Tensor, bool]:
    """``input`` as ``(N, C, *)`` and whether it was unbatched ``(C,)``."""
    if input.dim() == 0:
        raise ValueError(f"{name}: input must have shape (C,) or (N, C, *), got a scalar")
    if input.dim() == 1:
        return input.unsqueeze(0), True
    return input, False


def _check_index_target(
    name: str, input: Tensor, target: Tensor, unbatched: bool, ignore_index: int
) -> Tensor:
    """Validate class-index targets against ``(N, C, *)`` input; return them as ``(N, *)``."""
    expected = () if unbatched else (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != tuple(expected):
        want = "()" if unbatched else "(N, *) = " + str(tuple(expected))
        raise ValueError(
            f"{name}: class-index target must have shape {want} for input of shape "
            f"{tuple(input.shape[1:]) if unbatched else tuple(input.shape)}, "
            f"got {tuple(target.shape)}"
        )
    if unbatched:
        target = target.unsqueeze(0)
    c = input.shape[1]
    if _c.any_true(((target < 0) | (target >= c)) & (target != ignore_index)):
        raise ValueError(
            f"{name}: target class indices must be in [0, {c}) (or equal ignore_index="
            f"{ignore_index}); got values from {int(target.min())} to {int(target.max())}"
        )
    return target


def _check_class_weight(name: str, weight: Tensor | None, c: int) -> None:
    if weight is not None and tuple(weight.shape) != (c,):
        raise ValueError(f"{name}: weight must have shape (C,) = ({c},), got {tuple(weight.shape)}")


def _nll(
    log_probs: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-element ``-w[t] * log_probs[t]`` over ``(N, C, *)``, the per-element weights, the mask.

    Ignored positions have loss 0 and weight 0.
    """
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    picked = log_probs.gather(1, safe.unsqueeze(1)).squeeze(1)  # (N, *)
    if weight is None:
        w = valid.to(log_probs.dtype)
    else:
        w = torch.where(valid, weight[safe], weight.new_zeros(()))
    loss = torch.where(valid, -picked * w, picked.new_zeros(()))
    return loss, w, valid


def _reduce_examples(
    loss: Tensor, reduction: str, unbatched: bool, weights: Tensor | int
) -> Tensor:
    """Reduce per-example losses ``(N, *)``: ``'mean'`` is ``sum(loss) / sum(weights)``.

    ``weights`` are the per-example weights (torch's weighted mean) or their count;
    ``'none'`` of an unbatched ``(C,)`` input gives a scalar.
    """
    if reduction == "none":
        return loss.squeeze(0) if unbatched else loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (weights.sum() if isinstance(weights, Tensor) else weights)


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of class indices, given log-probabilities.

    Per element: ``l_i = -w[t_i] * input[i, t_i]`` (``w = 1`` without
    ``weight``), and ``l_i = 0`` where ``t_i == ignore_index``. ``'mean'`` is
    the weighted mean ``sum_i l_i / sum_i w[t_i]`` over non-ignored ``i``
    (NaN when every target is ignored, as in torch).

    Args:
        input: log-probabilities ``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``.
        target: class indices ``(N,)``, ``(N, d1, ...)`` or ``()``.
        weight: optional per-class weights ``(C,)``.
        size_average: deprecated, see ``reduction``.
        ignore_index: target value that contributes nothing.
        reduce: deprecated, see ``reduction``.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.

    Returns:
        The reduced loss, or per-element losses of ``target``'s shape for ``'none'``.

    Example:
        >>> import torch
        >>> nll_loss(torch.tensor([[-1.0, -2.0], [-3.0, -4.0]]), torch.tensor([0, 1]))
        tensor(2.5000)
    """
    name = "nll_loss"
    reduction = _c.reduction_of(
        name, reduction, size_average, reduce, input=input, target=target, weight=weight
    )
    if target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"{name}: target must hold integer class indices, got {target.dtype}")
    x, unbatched = _class_layout(name, input)
    target = _check_index_target(name, x, target, unbatched, ignore_index)
    _check_class_weight(name, weight, x.shape[1])
    loss, w, _ = _nll(x, target, weight, ignore_index)
    return _reduce_examples(loss, reduction, unbatched, w)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy between logits and class indices or class probabilities.

    With ``lp = log_softmax(input, dim=1)``, ``C`` classes and
    ``eps = label_smoothing``:

    *Class indices* (integer ``target``): ``nll_i = -w[t_i] * lp[i, t_i]`` and
    ``smooth_i = -sum_c w[c] * lp[i, c]``, both 0 where ``t_i == ignore_index``;
    ``l_i = (1 - eps) * nll_i + eps / C * smooth_i``. ``'mean'`` divides the
    sums of both terms by ``sum_i w[t_i]`` over non-ignored ``i`` (torch's
    weighted mean).

    *Probabilities* (floating ``target`` of ``input``'s shape):
    ``q = (1 - eps) * target + eps / C``;
    ``l_i = -sum_c w[c] * q[i, c] * lp[i, c]``; ``'mean'`` divides by the
    number of ``i`` (``input.numel() / C``), never by the weights;
    ``ignore_index`` is unused.

    Args:
        input: logits ``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``.
        target: class indices ``(N,)``/``(N, d1, ...)``/``()``, or
            probabilities of ``input``'s shape.
        weight: optional per-class weights ``(C,)``.
        size_average: deprecated, see ``reduction``.
        ignore_index: class-index target value that contributes nothing.
        reduce: deprecated, see ``reduction``.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        label_smoothing: ``eps`` in ``[0, 1]``.

    Returns:
        The reduced loss, or per-element losses (``input``'s shape without
        ``C``) for ``'none'``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[100.0, -100.0], [0.0, 0.0]])
        >>> cross_entropy(logits, torch.tensor([0, 1]), reduction="none")
        tensor([0.0000, 0.6931])
    """
    name = "cross_entropy"
    reduction = _c.reduction_of(
        name, reduction, size_average, reduce, input=input, target=target, weight=weight
    )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing}")
    x, unbatched = _class_layout(name, input)
    c = x.shape[1]
    _check_class_weight(name, weight, c)
    w_shape = (1, c) + (1,) * (x.dim() - 2)
    log_probs = log_softmax(x, dim=1)

    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(
                f"{name}: probability target must have the input's shape "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
        q = target.unsqueeze(0) if unbatched else target
        if label_smoothing > 0:
            q = q * (1 - label_smoothing) + label_smoothing / c
        terms = log_probs * q
        if weight is not None:
            terms = terms * weight.reshape(w_shape)
        loss = -terms.sum(1)  # (N, *)
        return _reduce_examples(loss, reduction, unbatched, x.numel() // c)

    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(
            f"{name}: target must be class indices or probabilities, got {target.dtype}"
        )
    target = _check_index_target(name, x, target, unbatched, ignore_index)
    loss, w, valid = _nll(log_probs, target, weight, ignore_index)
    if label_smoothing > 0:
        lp = log_probs if weight is None else log_probs * weight.reshape(w_shape)
        smooth = torch.where(valid, -lp.sum(1), lp.new_zeros(()))  # (N, *)
        if reduction == "none":
            loss = (1 - label_smoothing) * loss + (label_smoothing / c) * smooth
        elif reduction == "sum":
            return (1 - label_smoothing) * loss.sum() + (label_smoothing / c) * smooth.sum()
        else:
            denom = w.sum()
            return (1 - label_smoothing) * (loss.sum() / denom) + (label_smoothing / c) * (
                smooth.sum() / denom
            )
    return _reduce_examples(loss, reduction, unbatched, w)


@_c.fill_doc
def kl_div(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    """Kullback-Leibler divergence ``KL(target || exp(input))``, pointwise.

    ``input`` holds log-probabilities (note the argument order: the model's
    log-probabilities first, the reference distribution second).
    ``l = xlogy(target, target) - target * input``, or with ``log_target``
    ``l = exp(target) * (target - input)``. ``'batchmean'`` is
    ``sum(l) / input.shape[0]`` (the mathematical KL per sample); ``'mean'``
    divides by every element (torch warns about this; fdl does not).

    Args:
        input: log-probabilities, any shape.
        target: probabilities (or log-probabilities with ``log_target``), same shape.
        size_average: deprecated, see ``reduction``.
        reduce: deprecated, see ``reduction``.
        reduction: ``'none'`` | ``'batchmean'`` | ``'sum'`` | ``'mean'``.
        log_target: whether ``target`` is given in log space.

    {returns}

    Example:
        >>> import torch
        >>> p = torch.tensor([[0.5, 0.5]])
        >>> kl_div(p.log(), p, reduction="batchmean")
        tensor(0.)
    """
    name = "kl_div"
    _c.check_tensors(name, input=input, target=target)
    reduction = _c.reduction_of(
        name, reduction, size_average, reduce, allowed=("none", "batchmean", "sum", "mean")
    )
    _check_same_shape(name, input, target)
    if log_target:
        loss = torch.exp(target) * (target - input)
    else:
        loss = torch.xlogy(target, target) - target * input
    if reduction == "batchmean":
        total = loss.sum()
        return total / input.shape[0] if input.dim() != 0 else total
    return _c.reduce(loss, reduction)


# the rest of torch.nn.functional's losses, one module per family
from fdl import _ctc, _likelihood_losses, _linear_cross_entropy, _margin_losses  # noqa: E402
from fdl._ctc import *  # noqa: E402, F403
from fdl._likelihood_losses import *  # noqa: E402, F403
from fdl._linear_cross_entropy import *  # noqa: E402, F403
from fdl._margin_losses import *  # noqa: E402, F403

__all__ += [
    *_ctc.__all__,
    *_likelihood_losses.__all__,
    *_linear_cross_entropy.__all__,
    *_margin_losses.__all__,
]
