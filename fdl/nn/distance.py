"""``CosineSimilarity`` and ``PairwiseDistance``: two-input layers, no parameters.

``apply(params, x1, x2)`` calls :func:`fdl.nn.functional.cosine_similarity` /
:func:`~fdl.nn.functional.pairwise_distance` (formulas written out there).

Example:
    >>> import torch, fdl
    >>> fdl.nn.PairwiseDistance(eps=0.0).apply({}, torch.zeros(1, 2), torch.ones(1, 2))
    tensor([1.4142])
"""

from __future__ import annotations

from typing import Any

import torch

from fdl.nn import _functional_distance as _F
from fdl.nn._base import Layer, Params
from fdl.nn._layer_utils import check_params_fast

__all__ = ["CosineSimilarity", "PairwiseDistance"]


class _TwoInputs(Layer):
    def param_shapes(self) -> Params:
        """``{}``: no parameters."""
        return {}

    def _forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(
        self,
        params: Params,
        x1: torch.Tensor,
        x2: torch.Tensor,
        *,
        key: Any = None,
        train: bool = False,
    ) -> torch.Tensor:
        """``x1, x2`` (broadcastable) -> the reduced distance or similarity."""
        check_params_fast(self, params)
        return self._forward(x1, x2)


class CosineSimilarity(_TwoInputs):
    """Cosine similarity along ``dim``: ``(*, D, *), (*, D, *) -> (*, *)``."""

    dim: int = 1
    eps: float = 1e-8

    def _forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return _F.cosine_similarity(x1, x2, self.dim, self.eps)


class PairwiseDistance(_TwoInputs):
    """``||x1 - x2 + eps||_p`` along the last dimension: ``(N, D), (N, D) -> (N,)``."""

    p: float = 2.0
    eps: float = 1e-6
    keepdim: bool = False

    def _forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return _F.pairwise_distance(x1, x2, self.p, self.eps, self.keepdim)
