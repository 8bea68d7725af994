"""``Dropout``: zero elements at random during training, with an explicit key."""

from __future__ import annotations

from fdl.nn import _functional_layers as _F
from fdl.nn._base import Layer, OptKey, Params, Tensor
from fdl.nn._layer_utils import check_tensor

__all__ = ["Dropout"]


class _DropoutRate(Layer):
    """The fields every dropout layer shares, with torch's check of ``p``."""

    p: float = 0.5
    inplace: bool = False

    def _check_fields(self) -> None:
        p = self.p
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")


class Dropout(_DropoutRate):
    r"""Inverted dropout, as ``torch.nn.Dropout``: :math:`y = x \cdot m / (1 - p)`,
    :math:`m \sim \text{Bernoulli}(1 - p)` when ``train=True``; identity otherwise.

    The mask comes from ``key`` (required when ``train=True`` and ``p > 0``):
    ``apply(params, x, key=k, train=True)``. Inside a :class:`Sequential` the
    container hands each child its own key.

    Args:
        p: probability of zeroing an element.
        inplace: accepted for signature compatibility; fdl never mutates its input.

    Note:
        torch switches modes with ``module.train()``/``.eval()`` and draws from the
        global RNG; fdl takes ``train`` and ``key`` per call.

    Example:
        >>> import fdl, torch
        >>> drop = fdl.nn.Dropout(0.5)
        >>> x = torch.ones(4)
        >>> bool((drop.apply({}, x) == x).all())
        True
        >>> y = drop.apply({}, x, key=fdl.random.key(0), train=True)
        >>> set(y.tolist()) <= {0.0, 2.0}
        True
    """

    def apply(
        self, params: Params, x: Tensor, *, key: OptKey = None, train: bool = False
    ) -> Tensor:
        """Same shape in and out."""
        check_tensor(self, x)
        if train and 0.0 < self.p and key is None:
            raise ValueError(
                "Dropout: train=True needs key=... (an fdl.random key) to draw the mask"
            )
        return _F.dropout(x, self.p, train, key=key)
