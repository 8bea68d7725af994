"""``BatchNorm3d``: batch normalisation of ``(N, C, D, H, W)``, BatchNorm's explicit state."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

from fdl.nn.normalization import _BatchNorm

__all__ = ["BatchNorm3d"]


@dataclass(frozen=True)
class BatchNorm3d(_BatchNorm):
    """Batch normalisation of ``(N, C, D, H, W)`` input, ``C = num_features``.

    Same formulas and state update as :class:`fdl.nn.BatchNorm2d` (see its ``apply``).

    Example:
        >>> import torch, fdl
        >>> bn = fdl.nn.BatchNorm3d(2)
        >>> y, state = bn.apply(bn.init(), torch.randn(2, 2, 2, 2, 2), state=bn.init_state(),
        ...                     train=True)
        >>> int(state["num_batches_tracked"])
        1
    """

    _ranks: ClassVar[tuple[int, ...]] = (5,)
    _shape_text: ClassVar[str] = "(N, {c}, D, H, W)"

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    device: Any = None
    dtype: Any = None
    _: KW_ONLY
    bias: bool = True

    def __post_init__(self) -> None:
        self._check_args()
