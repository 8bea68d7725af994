"""``RMSNorm``: root-mean-square normalisation over trailing dimensions, as ``torch.nn``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fdl.nn import _functional_norms as _F
from fdl.nn._base import Layer, Params
from fdl.nn._layer_utils import check_params_fast

__all__ = ["RMSNorm"]


class RMSNorm(Layer):
    """``y = x / sqrt(mean(x**2) + eps) * weight`` over the trailing ``normalized_shape``.

    Params: ``weight`` of ``normalized_shape`` (ones) with ``elementwise_affine``.

    Args:
        normalized_shape: an int or the trailing shape normalised over.
        eps: added to the mean square; ``None`` is ``torch.finfo(x.dtype).eps``.
        elementwise_affine: learn a per-element scale.
        device: device of the initialised params.
        dtype: dtype of the initialised params.

    Example:
        >>> import torch, fdl
        >>> norm = fdl.nn.RMSNorm(2, eps=0.0)
        >>> norm.apply(norm.init(fdl.random.key(0)), torch.tensor([[1.0, 1.0]]))
        tensor([[1., 1.]])
    """

    normalized_shape: int | Sequence[int]
    eps: float | None = None
    elementwise_affine: bool = True
    device: Any = None
    dtype: Any = None

    def __post_init__(self) -> None:
        s = self.normalized_shape
        object.__setattr__(self, "normalized_shape", (s,) if isinstance(s, int) else tuple(s))

    def init(self, key: Any = None) -> Params:
        """``{"weight": ones(normalized_shape)}`` (``{}`` without ``elementwise_affine``)."""
        if not self.elementwise_affine:
            return {}
        dtype = self.dtype or torch.get_default_dtype()
        return {"weight": torch.ones(self.normalized_shape, dtype=dtype, device=self.device)}

    def apply(
        self, params: Params, x: torch.Tensor, *, key: Any = None, train: bool = False
    ) -> torch.Tensor:
        """``(*, *normalized_shape)`` -> same shape."""
        check_params_fast(self, params)
        shape = tuple(self.normalized_shape)  # type: ignore[arg-type]
        return _F.rms_norm(x, shape, params.get("weight"), self.eps)
