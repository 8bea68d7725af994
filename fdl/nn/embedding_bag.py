"""``EmbeddingBag``: bags of embedding rows reduced by sum, mean or max, as ``torch.nn``."""

from __future__ import annotations

from dataclasses import field
from typing import Any

import torch

from fdl import random as _random
from fdl.nn import _functional_embedding_bag as _F
from fdl.nn._base import Layer, Params
from fdl.nn._layer_utils import check_params_fast
from fdl.nn.embedding import _init_table

__all__ = ["EmbeddingBag"]


class EmbeddingBag(Layer):
    """Sums, means or maxima of bags of rows of a table, as ``torch.nn.EmbeddingBag``.

    Params: ``weight`` ``(num_embeddings, embedding_dim)`` from ``N(0, 1)``, the
    ``padding_idx`` row zero. ``apply(params, input, offsets=None, per_sample_weights=None)``;
    see :func:`fdl.nn.functional.embedding_bag`.

    Args:
        num_embeddings: size of the table.
        embedding_dim: size of each vector.
        max_norm: rescale looked-up rows to at most this norm (``params`` unchanged).
        norm_type: the ``p`` of that norm.
        scale_grad_by_freq: must be ``False``.
        mode: ``'sum'`` | ``'mean'`` | ``'max'``.
        sparse: must be ``False``.
        _weight: an initial table, returned (as a copy) by ``init``.
        include_last_offset: ``offsets`` carries the end of the last bag.
        padding_idx: an index left out of every bag.
        device: device of the initialised params.
        dtype: dtype of the initialised params.

    Example:
        >>> import torch, fdl
        >>> bag = fdl.nn.EmbeddingBag(10, 3, mode="sum")
        >>> params = bag.init(fdl.random.key(0))
        >>> bag.apply(params, torch.tensor([1, 2, 4, 5]), torch.tensor([0, 2])).shape
        torch.Size([2, 3])
    """

    num_embeddings: int
    embedding_dim: int
    max_norm: float | None = None
    norm_type: float = 2.0
    scale_grad_by_freq: bool = False
    mode: str = "mean"
    sparse: bool = False
    _weight: torch.Tensor | None = field(default=None, compare=False, repr=False)
    include_last_offset: bool = False
    padding_idx: int | None = None
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        n = self.num_embeddings
        if self.padding_idx is not None:
            if not -n <= self.padding_idx < n:
                raise ValueError(
                    f"EmbeddingBag: padding_idx must be within num_embeddings ({n}), "
                    f"got {self.padding_idx}"
                )
            if self.padding_idx < 0:
                object.__setattr__(self, "padding_idx", n + self.padding_idx)
        if self.mode not in ("sum", "mean", "max"):
            raise ValueError(
                f"EmbeddingBag: mode must be 'sum', 'mean' or 'max', got {self.mode!r}"
            )
        if self.sparse or self.scale_grad_by_freq:
            raise ValueError("EmbeddingBag: sparse and scale_grad_by_freq are not supported")

    def init(self, key: _random.Key) -> Params:
        """``weight ~ N(0, 1)`` with the ``padding_idx`` row zero (or a copy of ``_weight``)."""
        return _init_table(self, key)

    def apply(
        self,
        params: Params,
        x: torch.Tensor,
        offsets: torch.Tensor | None = None,
        per_sample_weights: torch.Tensor | None = None,
        *,
        key: Any = None,
        train: bool = False,
    ) -> torch.Tensor:
        """``(B, L)`` or ``(n,)`` with ``offsets`` -> ``(B, embedding_dim)``."""
        check_params_fast(self, params)
        return _F.embedding_bag(
            x,
            params["weight"],
            offsets,
            self.max_norm,
            self.norm_type,
            False,
            self.mode,
            False,
            per_sample_weights,
            self.include_last_offset,
            self.padding_idx,
        )
