"""``embedding_bag``: sums, means or maxima of bags of embedding rows, written out.

Each index ``j`` of the flattened input belongs to bag ``b(j)`` (a row of a 2-d input, or
the span ``offsets[b] <= j < offsets[b + 1]`` of a 1-d one). With rows
``r_j = weight[input_j] * w_j`` (``w_j`` the ``per_sample_weights``, ``mode='sum'`` only)
and ``padding_idx`` entries left out:

* ``sum``: ``y_b = sum_{b(j) = b} r_j``;
* ``mean``: ``y_b = sum_{b(j) = b} r_j / #{j: b(j) = b}``;
* ``max``: ``y_b = max_{b(j) = b} r_j`` (per coordinate);

an empty bag is all zeros.
"""

from __future__ import annotations

import torch

from fdl.nn._functional_layers import embedding

__all__ = ["embedding_bag"]

Tensor = torch.Tensor


def _bags(
    input: Tensor, offsets: Tensor | None, include_last_offset: bool
) -> tuple[Tensor, Tensor, int]:
    """Flat indices ``(n,)``, each index's bag ``(n,)`` and the number of bags."""
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError("embedding_bag: offsets must be None when input is 2-d (B, L)")
        b, length = input.shape
        bag = torch.arange(b, device=input.device).repeat_interleave(length)  # (B L,)
        return input.reshape(-1), bag, b
    if input.dim() != 1:
        raise ValueError(f"embedding_bag: input must be 1-d or 2-d, got {input.dim()}-d")
    if offsets is None or offsets.dim() != 1:
        raise ValueError("embedding_bag: a 1-d input needs 1-d offsets")
    nbags = offsets.numel() - 1 if include_last_offset else offsets.numel()
    starts = offsets[:nbags].to(torch.int64)
    j = torch.arange(input.numel(), device=input.device)
    bag = torch.bucketize(j, starts, right=True) - 1  # (n,): the last start <= j
    if include_last_offset:
        bag = torch.where(j < offsets[-1], bag, -1)  # past the last offset: in no bag
    return input, bag, nbags


def embedding_bag(
    input: Tensor,
    weight: Tensor,
    offsets: Tensor | None = None,
    max_norm: float | None = None,
    norm_type: float = 2,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    sparse: bool = False,
    per_sample_weights: Tensor | None = None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
) -> Tensor:
    """Reduce bags of rows of ``weight`` (see the module docstring for the formulas).

    Args:
        input: ``(B, L)`` indices (one bag per row) or ``(n,)`` indices with ``offsets``.
        weight: ``(num_embeddings, embedding_dim)``.
        offsets: ``(B,)`` bag starts for a 1-d input (``(B + 1,)`` with
            ``include_last_offset``).
        max_norm: rescale looked-up rows to at most this norm (as ``embedding``).
        norm_type: the ``p`` of that norm.
        scale_grad_by_freq: must be ``False`` (not supported with bags).
        mode: ``'sum'`` | ``'mean'`` | ``'max'``.
        sparse: must be ``False``.
        per_sample_weights: weights of the shape of ``input``, ``mode='sum'`` only.
        include_last_offset: ``offsets`` has a final entry ending the last bag.
        padding_idx: an index left out of every bag (and of the mean's count).

    Returns:
        ``(B, embedding_dim)``.

    Example:
        >>> import torch
        >>> w = torch.arange(6.0).reshape(3, 2)
        >>> embedding_bag(torch.tensor([0, 2, 1]), w, torch.tensor([0, 2]), mode="sum")
        tensor([[4., 6.],
                [2., 3.]])
    """
    if mode not in ("sum", "mean", "max"):
        raise ValueError(f"embedding_bag: mode must be 'sum', 'mean' or 'max', got {mode!r}")
    if sparse or scale_grad_by_freq:
        raise ValueError("embedding_bag: sparse and scale_grad_by_freq are not supported")
    if per_sample_weights is not None:
        if mode != "sum":
            raise ValueError(
                "embedding_bag: per_sample_weights is only supported for mode='sum', "
                f"got mode={mode!r}"
            )
        if per_sample_weights.shape != input.shape:
            raise ValueError(
                f"embedding_bag: per_sample_weights shape {tuple(per_sample_weights.shape)} "
                f"must equal input shape {tuple(input.shape)}"
            )
    if padding_idx is not None and padding_idx < 0:
        padding_idx = weight.shape[0] + padding_idx
    flat, bag, nbags = _bags(input, offsets, include_last_offset)
    d = weight.shape[1]
    rows = embedding(flat, weight, None, max_norm, norm_type)  # (n, D)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.reshape(-1, 1)
    counted = bag >= 0
    if padding_idx is not None:
        counted = counted & (flat != padding_idx)
    bag = torch.where(counted, bag, 0)  # left-out entries add 0 to bag 0
    count = torch.zeros(nbags, dtype=weight.dtype, device=weight.device)
    count = count.index_add(0, bag, counted.to(weight.dtype))  # (B,)
    if mode == "max":
        rows = torch.where(counted[:, None], rows, -torch.inf)
        out = torch.full((nbags, d), -torch.inf, dtype=weight.dtype, device=weight.device)
        out = out.scatter_reduce(0, bag[:, None].expand(-1, d), rows, "amax")  # (B, D)
        return torch.where(count[:, None] > 0, out, 0.0)
    rows = torch.where(counted[:, None], rows, 0.0)
    out = torch.zeros(nbags, d, dtype=weight.dtype, device=weight.device)
    out = out.index_add(0, bag, rows)  # (B, D)
    if mode == "mean":
        out = out / count.clamp_min(1)[:, None]
    return out
