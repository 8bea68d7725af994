"""``Embedding``: a lookup table of vectors indexed by integers."""

from __future__ import annotations

from typing import Any

import torch

from fdl import random as _random
from fdl.nn import _functional_layers as _F
from fdl.nn import init as _init
from fdl.nn._base import Layer, OptKey, Params, Tensor, field

__all__ = ["Embedding"]


def _init_table(layer: Any, key: _random.Key) -> Params:
    """``{"weight": w}`` for an embedding table (``Embedding``, ``EmbeddingBag``).

    ``w ~ N(0, 1)`` of shape ``(num_embeddings, embedding_dim)`` with the ``padding_idx`` row
    zero, or a copy of ``layer._weight`` when one was given (on ``meta`` for a meta key).
    """
    if layer._weight is not None:
        w = layer._weight.detach()
        if key.device.type == "meta":
            w = w.to("meta")
        return {"weight": w.to(dtype=layer.dtype or w.dtype).clone()}
    shape = (layer.num_embeddings, layer.embedding_dim)
    w = _init.normal(key, shape, dtype=layer.dtype, device=layer.device)
    if layer.padding_idx is not None:
        rows = torch.arange(layer.num_embeddings, device=w.device).unsqueeze(1)
        w = torch.where(rows == layer.padding_idx, torch.zeros((), dtype=w.dtype), w)
    return {"weight": w}


def _row_index(value: Any, layer: Any) -> int | None:
    """``padding_idx`` in ``[-num_embeddings, num_embeddings)``, stored non-negative."""
    n = layer.num_embeddings
    if value is None:
        return None
    if not -n <= value < n:
        raise ValueError(f"must be within num_embeddings ({n}), got {value}")
    return value + n if value < 0 else value


class Embedding(Layer):
    r"""A table of ``num_embeddings`` vectors of size ``embedding_dim``, as ``torch.nn.Embedding``.

    Params: ``weight`` ``(num_embeddings, embedding_dim)`` drawn from
    :math:`\mathcal{N}(0, 1)`, with the ``padding_idx`` row set to zero.

    Shapes: integer indices ``(*)`` -> ``(*, embedding_dim)``.

    Args:
        num_embeddings: size of the table.
        embedding_dim: size of each vector.
        padding_idx: a row initialised to zero that receives no gradient.
        max_norm: rows with a larger ``norm_type``-norm are rescaled to this norm
            in the output.
        norm_type: the ``p`` of that norm.
        scale_grad_by_freq: divide gradients by the batch frequency of each index.
        sparse: must be ``False`` (no sparse gradients).
        _weight: an initial table, returned (as a copy) by ``init``.
        _freeze: accepted for compatibility; which params train is decided by the
            optimizer in fdl.
        device: device of the initialised params.
        dtype: dtype of the initialised params.

    Note:
        With ``max_norm`` torch rewrites the looked-up rows of ``weight`` in place;
        fdl returns the same output and gradients but leaves ``params`` unchanged.

    Example:
        >>> import fdl, torch
        >>> emb = fdl.nn.Embedding(10, 3, padding_idx=0)
        >>> params = emb.init(fdl.random.key(0))
        >>> params["weight"][0].tolist()
        [0.0, 0.0, 0.0]
        >>> emb.apply(params, torch.tensor([[1, 2], [0, 9]])).shape
        torch.Size([2, 2, 3])
    """

    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None = field(default=None, converter=_row_index)
    max_norm: float | None = None
    norm_type: float = 2.0
    scale_grad_by_freq: bool = False
    sparse: bool = False
    _weight: torch.Tensor | None = field(default=None, compare=False, repr=False)
    _freeze: bool = False
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None

    def _check_fields(self) -> None:
        if self.sparse:
            raise ValueError("Embedding: sparse=True is not supported (fdl uses dense gradients)")
        w = self._weight
        if w is not None and tuple(w.shape) != (self.num_embeddings, self.embedding_dim):
            raise ValueError(
                f"Embedding: _weight has shape {tuple(w.shape)}, expected "
                f"{(self.num_embeddings, self.embedding_dim)}"
            )

    def init(self, key: _random.Key) -> Params:
        """``weight ~ N(0, 1)`` with the ``padding_idx`` row zero (or a copy of ``_weight``)."""
        return _init_table(self, key)

    def apply(
        self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """Integer ``(*)`` -> ``(*, embedding_dim)``."""
        if not isinstance(x, torch.Tensor) or x.dtype.is_floating_point or x.dtype.is_complex:
            got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise TypeError(f"Embedding: input must be a tensor of integer indices, got {got}")
        return _F.embedding(
            x,
            params["weight"],
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
        )
