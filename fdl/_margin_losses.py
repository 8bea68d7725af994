"""Margin, ranking and embedding losses with ``torch.nn.functional``'s names and arguments.

Written out from their formulas (``docs/catalog.md`` lists them; each docstring has the
formula in the code's symbols). Re-exported by :mod:`fdl.losses`. Hinges are
``clamp_min(z, 0)``, whose gradient at ``z = 0`` passes (as torch's); the multi-class hinges
of ``multilabel_margin_loss`` and ``multi_margin_loss`` count a term only where ``z > 0``,
as torch's kernels do. Losses with one signature share it: each is made by a factory
(``_pair_loss``, ``_scored_loss``) from its per-element (or per-sample) formula.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fdl import _loss_common as _c
from fdl.nn.functional import logsigmoid, pairwise_distance

__all__ = [
    "cosine_embedding_loss",
    "hinge_embedding_loss",
    "margin_ranking_loss",
    "multi_margin_loss",
    "multilabel_margin_loss",
    "multilabel_soft_margin_loss",
    "soft_margin_loss",
    "triplet_margin_loss",
    "triplet_margin_with_distance_loss",
]

Tensor = torch.Tensor


def _pair_loss(
    name: str, per_pair: Callable[[Tensor, Tensor, Tensor, float], Tensor], doc: str
) -> Callable[..., Tensor]:
    """The loss ``name`` of two inputs, a ``1``/``-1`` target and a margin: ``per_pair`` reduced."""

    def loss(
        input1: Tensor,
        input2: Tensor,
        target: Tensor,
        margin: float = 0,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        reduction = _c.reduction_of(
            name, reduction, size_average, reduce, input1=input1, input2=input2, target=target
        )
        return _c.reduce(per_pair(input1, input2, target, margin), reduction)

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc
    return _c.fill_doc(loss)


def _scored_loss(
    name: str, losses: Callable[[Tensor, Tensor], Tensor], doc: str
) -> Callable[..., Tensor]:
    """The loss ``name`` of scores ``input`` and ``target``: ``losses(input, target)`` reduced."""

    def loss(
        input: Tensor,
        target: Tensor,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
    ) -> Tensor:
        reduction = _c.reduction_of(
            name, reduction, size_average, reduce, input=input, target=target
        )
        return _c.reduce(losses(input, target), reduction)

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = doc
    return _c.fill_doc(loss)


def _ranking_hinges(input1: Tensor, input2: Tensor, target: Tensor, margin: float) -> Tensor:
    """Per-pair losses of :func:`margin_ranking_loss`."""
    if not input1.dim() == input2.dim() == target.dim():
        raise ValueError(
            "margin_ranking_loss: input1, input2 and target must have the same number of "
            f"dimensions, got {input1.dim()}, {input2.dim()} and {target.dim()}"
        )
    loss = (-target * (input1 - input2) + margin).clamp_min(0)
    return loss


margin_ranking_loss = _pair_loss(
    "margin_ranking_loss",
    _ranking_hinges,
    """Ranking hinge: ``l = max(0, -target * (input1 - input2) + margin)``.

    Args:
        input1: scores, ``(N,)`` or ``()``.
        input2: same shape as ``input1``.
        target: ``1`` where ``input1`` should rank higher, ``-1`` where lower.
        margin: the required gap.
        {reduction_args}

    {returns}

    Example:
        >>> import torch
        >>> margin_ranking_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([-1.0]))
        tensor(1.)
    """,
)


@_c.fill_doc
def hinge_embedding_loss(
    input: Tensor,
    target: Tensor,
    margin: float = 1.0,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Hinge embedding loss: ``l = where(target == 1, input, max(0, margin - input))``.

    As in torch, an element whose target is neither ``1`` nor ``-1`` gets both terms
    (``input + max(0, margin - input)``).

    Args:
        input: distances, any shape.
        target: ``1`` (similar) or ``-1`` (dissimilar), same shape as ``input``.
        margin: the hinge's margin for dissimilar pairs.
        {reduction_args}

    {returns}

    Example:
        >>> import torch
        >>> hinge_embedding_loss(torch.tensor([0.3, 0.3]), torch.tensor([1.0, -1.0]))
        tensor(0.5000)
    """
    name = "hinge_embedding_loss"
    reduction = _c.reduction_of(name, reduction, size_average, reduce, input=input, target=target)
    zeros = torch.zeros_like(input)
    hinge = torch.where(target != 1, (margin - input).clamp_min(0), zeros)
    linear = torch.where(target != -1, input, zeros)
    return _c.reduce(hinge + linear, reduction)


def _soft_margins(input: Tensor, target: Tensor) -> Tensor:
    """Per-element losses of :func:`soft_margin_loss`."""
    _c.check_same_shape("soft_margin_loss", input=input, target=target)
    return -logsigmoid(target * input)


soft_margin_loss = _scored_loss(
    "soft_margin_loss",
    _soft_margins,
    """Two-class logistic loss: ``l = log(1 + exp(-target * input)) = -logsigmoid(target * input)``.

    Computed as ``-logsigmoid`` so it stays finite for any ``target * input``.

    Args:
        input: scores, any shape.
        target: ``1`` or ``-1``, same shape as ``input``.
        {reduction_args}

    {returns}

    Example:
        >>> import torch
        >>> soft_margin_loss(torch.tensor([0.0]), torch.tensor([1.0]))
        tensor(0.6931)
    """,
)


@_c.fill_doc
def multilabel_soft_margin_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Per-sample mean over classes of the binary logistic loss.

    ``l_c = -(target_c * logsigmoid(input_c) + (1 - target_c) * logsigmoid(-input_c))``,
    times ``weight_c`` if given; each sample's loss is ``sum_c(l_c) / C``.

    Args:
        input: ``(N, C)`` or ``(C,)`` scores.
        target: same shape, ``1`` for a present label and ``0`` for an absent one.
        weight: optional per-class weights broadcast against ``input`` (e.g. ``(C,)``).
        size_average: deprecated, see ``reduction``.
        reduce: deprecated, see ``reduction``.
        reduction: ``'none'`` (``(N,)``) | ``'mean'`` | ``'sum'``.

    {returns:per-sample}

    Example:
        >>> import torch
        >>> multilabel_soft_margin_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))
        tensor(0.6931)
    """
    name = "multilabel_soft_margin_loss"
    reduction = _c.reduction_of(
        name, reduction, size_average, reduce, input=input, target=target, weight=weight
    )
    _c.check_same_shape(name, input=input, target=target)
    loss = -(target * logsigmoid(input) + (1 - target) * logsigmoid(-input))
    if weight is not None:
        loss = loss * weight
    class_dim = input.dim() - 1
    loss = loss.sum(class_dim) / input.shape[class_dim]  # (N,)
    return _c.reduce(loss, reduction)


def _per_sample(
    name: str,
    input: Tensor,
    target: Tensor,
    per_sample: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """``per_sample(x, t)`` of ``(N, C)`` scores ``x`` and ``(N, ...)`` targets ``t``.

    A 1-d (or 0-d) ``input`` is one sample: it is scored as ``(1, C)`` and its loss is a
    scalar ``()``.
    """
    if input.dim() > 2:
        raise ValueError(f"{name}: input must be (C,) or (N, C), got {tuple(input.shape)}")
    unbatched = input.dim() < 2
    if unbatched:
        input, target = input.reshape(1, -1), target.reshape(1, -1)  # (1, C)
    loss = per_sample(input, target)  # (N,)
    return loss.reshape(()) if unbatched else loss


def _multilabel_hinges(input: Tensor, target: Tensor) -> Tensor:
    """Per-sample losses of :func:`multilabel_margin_loss`."""
    name = "multilabel_margin_loss"
    if target.shape != input.shape or target.dtype.is_floating_point:
        raise ValueError(
            f"{name}: target must be an integer tensor of input's shape {tuple(input.shape)}, "
            f"got {target.dtype} {tuple(target.shape)}"
        )

    def hinges(x: Tensor, t: Tensor) -> Tensor:
        n, c = x.shape
        if _c.any_true((t < -1) | (t >= c)):
            raise ValueError(f"{name}: target values must be in [-1, {c - 1}]")
        listed = torch.cumprod((t != -1).to(torch.int64), dim=1).bool()  # (N, C): before first -1
        labels = torch.where(listed, t, 0)  # (N, C)
        is_label = torch.zeros(n, c, dtype=torch.int64, device=x.device)
        is_label = is_label.scatter_add(1, labels, listed.to(torch.int64)) > 0  # (N, C)
        x_label = x.gather(1, labels)  # (N, C): the score of the j-th listed label
        z = 1 - x_label[:, :, None] + x[:, None, :]  # (N, j, i)
        keep = listed[:, :, None] & ~is_label[:, None, :] & (z > 0)  # (N, j, i)
        return torch.where(keep, z, 0.0).sum((1, 2)) / c  # (N,)

    return _per_sample(name, input, target, hinges)


multilabel_margin_loss = _scored_loss(
    "multilabel_margin_loss",
    _multilabel_hinges,
    """Multi-class multi-label hinge loss.

    A sample's labels are ``target[:k]``, where ``k`` is the position of the first ``-1``
    (or ``C``). With ``Y`` that set of labels,
    ``loss = sum_{j < k} sum_{i not in Y} max(0, 1 - (input[target[j]] - input[i])) / C``
    (a label listed twice counts twice, as in torch).

    Args:
        input: ``(N, C)`` or ``(C,)`` scores.
        target: integer tensor of ``input``'s shape: label indices, then ``-1`` padding.
        size_average: deprecated, see ``reduction``.
        reduce: deprecated, see ``reduction``.
        reduction: ``'none'`` (``(N,)``, or ``()`` unbatched) | ``'mean'`` | ``'sum'``.

    {returns:per-sample}

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.1, 0.2, 0.4, 0.8]])
        >>> multilabel_margin_loss(x, torch.tensor([[3, 0, -1, 1]]))
        tensor(0.8500)
    """,
)


@_c.fill_doc
def multi_margin_loss(
    input: Tensor,
    target: Tensor,
    p: int = 1,
    margin: float = 1.0,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class hinge loss.

    With ``y = target``:
    ``loss = sum_{i != y} w_y * max(0, margin - input[y] + input[i])**p / C``
    (``w_y = weight[y]``, or 1). ``'mean'`` divides the sum over samples by ``N``
    (not by the weights), as torch does.

    Args:
        input: ``(N, C)`` or ``(C,)`` scores.
        target: ``(N,)`` (or ``()``) class indices.
        p: ``1`` or ``2``.
        margin: the required gap between the true class and the others.
        weight: optional ``(C,)`` class weights.
        {reduction_args}

    {returns:per-sample}

    Example:
        >>> import torch
        >>> multi_margin_loss(torch.tensor([[0.1, 0.2, 0.4, 0.8]]), torch.tensor([3]))
        tensor(0.3250)
    """
    name = "multi_margin_loss"
    reduction = _c.reduction_of(
        name, reduction, size_average, reduce, input=input, target=target, weight=weight
    )
    if p not in (1, 2):
        raise ValueError(f"{name}: only p == 1 and p == 2 are supported, got {p!r}")
    if weight is not None and weight.dim() != 1:
        raise ValueError(f"{name}: weight must be one-dimensional, got {tuple(weight.shape)}")

    def hinges(x: Tensor, t: Tensor) -> Tensor:
        n, c = x.shape
        t = t.reshape(n)
        if _c.any_true((t < 0) | (t >= c)):
            raise ValueError(f"{name}: target values must be in [0, {c - 1}]")
        x_true = x.gather(1, t[:, None])  # (N, 1)
        z = margin - x_true + x  # (N, C)
        not_true = torch.arange(c, device=x.device)[None, :] != t[:, None]  # (N, C)
        h = torch.where(not_true & (z > 0), z if p == 1 else z * z, 0.0)
        if weight is not None:
            h = h * weight[t][:, None]
        return h.sum(1) / c  # (N,)

    return _c.reduce(_per_sample(name, input, target, hinges), reduction)


_COSINE_EPS = 1e-12


def _cosine_hinges(input1: Tensor, input2: Tensor, target: Tensor, margin: float) -> Tensor:
    """Per-pair losses of :func:`cosine_embedding_loss`."""
    name = "cosine_embedding_loss"
    _c.check_same_shape(name, input1=input1, input2=input2)
    if input1.dim() not in (1, 2) or target.dim() != input1.dim() - 1:
        raise ValueError(
            f"{name}: expected inputs (N, D) with target (N,), or (D,) with target (), got "
            f"{tuple(input1.shape)} and target {tuple(target.shape)}"
        )
    dim = input1.dim() - 1
    prod = (input1 * input2).sum(dim)
    mag1 = (input1 * input1).sum(dim) + _COSINE_EPS
    mag2 = (input2 * input2).sum(dim) + _COSINE_EPS
    cos = prod / torch.sqrt(mag1 * mag2)
    zeros = torch.zeros_like(cos)
    loss = torch.where(target == 1, 1 - cos, zeros) + torch.where(
        target == -1, (cos - margin).clamp_min(0), zeros
    )
    return loss


cosine_embedding_loss = _pair_loss(
    "cosine_embedding_loss",
    _cosine_hinges,
    """Cosine embedding loss: ``1 - cos`` for similar pairs, ``max(0, cos - margin)`` otherwise.

    ``cos = sum(input1 * input2) / sqrt((sum(input1**2) + 1e-12) * (sum(input2**2) + 1e-12))``
    along the feature dimension; ``l = where(target == 1, 1 - cos, 0) +
    where(target == -1, max(0, cos - margin), 0)``.

    Args:
        input1: ``(N, D)`` or ``(D,)``.
        input2: same shape as ``input1``.
        target: ``(N,)`` (or ``()``) of ``1`` or ``-1``.
        margin: the hinge's margin for dissimilar pairs.
        {reduction_args}

    {returns:per-pair}

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0]])
        >>> cosine_embedding_loss(x, x, torch.tensor([-1.0]))
        tensor(1.)
    """,
)


def _check_triplet(name: str, anchor: Tensor, positive: Tensor, negative: Tensor, margin: float):
    _c.check_tensors(name, anchor=anchor, positive=positive, negative=negative)
    if margin <= 0:
        raise ValueError(f"{name}: margin must be greater than 0, got {margin}")
    if not anchor.dim() == positive.dim() == negative.dim():
        raise ValueError(
            f"{name}: anchor, positive and negative must have the same number of dimensions, "
            f"got {anchor.dim()}, {positive.dim()} and {negative.dim()}"
        )


def _triplet_hinge(
    dist: Callable[[Tensor, Tensor], Tensor],
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float,
    swap: bool,
    reduction: str,
) -> Tensor:
    """``max(0, margin + dist(a, p) - dist(a, n))``, reduced.

    With ``swap``, ``dist(a, n)`` becomes ``min(dist(a, n), dist(p, n))``.
    """
    d_pos = dist(anchor, positive)
    d_neg = dist(anchor, negative)
    if swap:
        d_neg = torch.minimum(d_neg, dist(positive, negative))
    return _c.reduce((margin + d_pos - d_neg).clamp_min(0), reduction)


@_c.fill_doc
def triplet_margin_with_distance_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    *,
    distance_function: Callable[[Tensor, Tensor], Tensor] | None = None,
    margin: float = 1.0,
    swap: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Triplet loss under any distance: ``l = max(0, margin + d(a, p) - d(a, n))``.

    With ``swap=True``, ``d(a, n)`` is replaced by ``min(d(a, n), d(p, n))``.

    Args:
        anchor: ``(N, D)`` or ``(D,)``.
        positive: same number of dimensions as ``anchor``.
        negative: same number of dimensions as ``anchor``.
        distance_function: ``d(x1, x2) -> (N,)``; default
            :func:`fdl.nn.functional.pairwise_distance`.
        margin: positive margin.
        swap: use the distance swap of Balntas et al. (2016).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.

    {returns:per-triplet}

    Example:
        >>> import torch
        >>> a, p, n = torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2)
        >>> l1 = lambda x, y: (x - y).abs().sum(-1)
        >>> triplet_margin_with_distance_loss(a, p, n, distance_function=l1)
        tensor(0.)
    """
    name = "triplet_margin_with_distance_loss"
    _check_triplet(name, anchor, positive, negative, margin)
    reduction = _c.reduction_of(name, reduction)
    dist = pairwise_distance if distance_function is None else distance_function
    return _triplet_hinge(dist, anchor, positive, negative, margin, swap, reduction)


@_c.fill_doc
def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    p: float = 2,
    eps: float = 1e-6,
    swap: bool = False,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Triplet loss under the ``p``-norm: ``l = max(0, margin + d(a, p) - d(a, n))``.

    ``d(x1, x2) = ||x1 - x2 + eps||_p`` (:func:`fdl.nn.functional.pairwise_distance`); with
    ``swap=True``, ``d(a, n)`` becomes ``min(d(a, n), d(p, n))``.

    Args:
        anchor: ``(N, D)`` or ``(D,)``.
        positive: same number of dimensions as ``anchor``.
        negative: same number of dimensions as ``anchor``.
        margin: positive margin.
        p: the norm degree.
        eps: added to each difference.
        swap: use the distance swap.
        {reduction_args}

    {returns:per-triplet}

    Example:
        >>> import torch
        >>> a = torch.zeros(1, 2)
        >>> triplet_margin_loss(a, a, a + 3.0, eps=0.0)
        tensor(0.)
    """
    name = "triplet_margin_loss"
    _check_triplet(name, anchor, positive, negative, margin)
    reduction = _c.reduction_of(name, reduction, size_average, reduce)

    def dist(x1: Tensor, x2: Tensor) -> Tensor:
        return pairwise_distance(x1, x2, p, eps)

    return _triplet_hinge(dist, anchor, positive, negative, margin, swap, reduction)
