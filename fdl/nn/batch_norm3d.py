"""``BatchNorm3d``: batch normalisation of ``(N, C, D, H, W)``, BatchNorm's explicit state."""

from __future__ import annotations

from typing import ClassVar

from fdl.nn.normalization import _BatchNorm

__all__ = ["BatchNorm3d"]


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
