"""Activations and the softmax family as pure functions.

Names, arguments and defaults follow ``torch.nn.functional``. The softmax
family (``softmax``, ``log_softmax``, ``logsumexp``) is written out from its
formulas; the pointwise activations are written from elementwise math so their
gradients at the kinks (``relu`` at 0, ``leaky_relu`` at 0, ...) equal torch's.
The normalisations live in :mod:`fdl.nn._functional_norms`.

fdl is pure: the ``inplace`` arguments exist for signature compatibility and
only ``inplace=False`` is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from fdl.nn import _lean_softmax as _lean
from fdl.nn._functional_named import named

__all__ = [
    "elu",
    "gelu",
    "leaky_relu",
    "logsigmoid",
    "log_softmax",
    "logsumexp",
    "relu",
    "sigmoid",
    "silu",
    "softmax",
    "tanh",
]

Tensor = torch.Tensor


def _no_inplace(name: str, inplace: bool) -> None:
    if inplace:
        raise ValueError(
            f"{name}: inplace=True is not supported; fdl functions never mutate their "
            "inputs (use the returned tensor)"
        )


def _check_tensor(name: str, x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor input, got {type(x).__name__}")


def _checked(name: str, input: object, inplace: bool = False) -> None:
    """Reject ``inplace=True``, then a non-tensor ``input`` (the shared activation checks)."""
    _no_inplace(name, inplace)
    _check_tensor(name, input)


# --------------------------------------------------------------------------- pointwise


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    """Rectified linear unit, elementwise.

    ``y = max(input, 0)``: the gradient at 0 is 0 and NaN passes through. ReLU is
    elementwise math, so the ``aten::relu`` kernel computes it (one fused pass
    forward and backward, which the eager per-sample path relies on).

    Args:
        input: any tensor.
        inplace: must be ``False`` (fdl never mutates inputs).

    Returns:
        A new tensor of the same shape.

    Example:
        >>> import torch
        >>> relu(torch.tensor([-1.0, 0.0, 2.0]))
        tensor([0., 0., 2.])
    """
    _checked("relu", input, inplace)
    return torch.relu(input)


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """Leaky ReLU: ``y = where(input > 0, input, negative_slope * input)``.

    The gradient at 0 is ``negative_slope``, as in torch.

    Args:
        input: any tensor.
        negative_slope: slope for negative inputs.
        inplace: must be ``False``.

    Returns:
        A new tensor of the same shape.

    Example:
        >>> import torch
        >>> leaky_relu(torch.tensor([-2.0, 3.0]), 0.5)
        tensor([-1.,  3.])
    """
    _checked("leaky_relu", input, inplace)
    return torch.where(input > 0, input, input * negative_slope)


def elu(input: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    """Exponential linear unit: ``y = where(input > 0, input, alpha * expm1(input))``.

    Args:
        input: any tensor.
        alpha: scale of the negative branch.
        inplace: must be ``False``.

    Returns:
        A new tensor of the same shape.

    Example:
        >>> import torch
        >>> elu(torch.tensor([0.0, 1.0]))
        tensor([0., 1.])
    """
    _checked("elu", input, inplace)
    # the negative branch sees 0 where input > 0, so it stays finite (no inf * 0 in the gradient)
    negative = alpha * torch.expm1(torch.where(input > 0, torch.zeros_like(input), input))
    return torch.where(input > 0, input, negative)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """Gaussian error linear unit.

    ``approximate='none'``: ``y = 0.5 * input * (1 + erf(input / sqrt(2)))``;
    ``approximate='tanh'``:
    ``y = 0.5 * input * (1 + tanh(sqrt(2 / pi) * (input + 0.044715 * input**3)))``.

    Args:
        input: any tensor.
        approximate: ``'none'`` or ``'tanh'``.

    Returns:
        A new tensor of the same shape.

    Example:
        >>> import torch
        >>> gelu(torch.tensor([0.0, 10.0]))
        tensor([ 0., 10.])
    """
    _check_tensor("gelu", input)
    if approximate == "none":
        return 0.5 * input * (1.0 + torch.erf(input * (1.0 / math.sqrt(2.0))))
    if approximate == "tanh":
        inner = _SQRT_2_OVER_PI * (input + 0.044715 * input * input * input)
        return 0.5 * input * (1.0 + torch.tanh(inner))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def _kernel(name: str, kernel: Callable[[Tensor], Tensor], doc: str) -> Callable[[Tensor], Tensor]:
    """The public function ``name``: the tensor check, then torch's elementwise ``kernel``."""

    def fn(input: Tensor) -> Tensor:
        _check_tensor(name, input)
        return kernel(input)

    return named(fn, name, doc)


sigmoid = _kernel(
    "sigmoid",
    torch.sigmoid,
    """Logistic sigmoid ``y = 1 / (1 + exp(-input))`` (torch's elementwise kernel).

    Example:
        >>> import torch
        >>> sigmoid(torch.tensor([0.0]))
        tensor([0.5000])
    """,
)

tanh = _kernel(
    "tanh",
    torch.tanh,
    """Hyperbolic tangent (torch's elementwise kernel).

    Example:
        >>> import torch
        >>> tanh(torch.tensor([0.0]))
        tensor([0.])
    """,
)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """Sigmoid linear unit (swish): ``y = input * sigmoid(input)``.

    Example:
        >>> import torch
        >>> silu(torch.tensor([0.0]))
        tensor([0.])
    """
    _checked("silu", input, inplace)
    return input * torch.sigmoid(input)


def logsigmoid(input: Tensor) -> Tensor:
    """``log(sigmoid(input))`` computed without overflow for any input.

    ``y = where(input < 0, input - log1p(exp(input)), -log1p(exp(-input)))``,
    each branch fed a clamped input so the unused one stays finite (and so does
    its gradient); the gradient at 0 is exactly ``0.5``.

    Example:
        >>> import torch
        >>> logsigmoid(torch.tensor([-1000.0, 0.0, 1000.0]))
        tensor([-1000.0000,    -0.6931,    -0.0000])
    """
    _check_tensor("logsigmoid", input)
    zero = torch.zeros_like(input)
    neg = torch.where(input < 0, input, zero)  # each branch sees 0 where it is not used
    pos = torch.where(input < 0, zero, input)
    return torch.where(input < 0, neg - torch.log1p(torch.exp(neg)), -torch.log1p(torch.exp(-pos)))


# --------------------------------------------------------------------------- softmax family


def _softmax_dim(name: str, input: Tensor, dim: int | None) -> int:
    if dim is None:
        # torch's legacy implicit choice (deprecated there): 0 for 0-, 1- and 3-d inputs, else 1
        return 0 if input.dim() in (0, 1, 3) else 1
    nd = max(input.dim(), 1)
    if not -nd <= dim < nd:
        raise ValueError(
            f"{name}: dim {dim} is out of range for an input of shape {tuple(input.shape)}"
        )
    return dim


def logsumexp(input: Tensor, dim: int | Sequence[int], keepdim: bool = False) -> Tensor:
    """Stable ``log(sum(exp(input), dim))``.

    ``m = max(input, dim)`` (treated as a constant, 0 where not finite);
    ``y = m + log(sum(exp(input - m), dim))``. The gradient is
    ``softmax(input, dim)``.

    Args:
        input: any floating tensor.
        dim: dimension or dimensions to reduce.
        keepdim: keep the reduced dimensions with size 1.

    Returns:
        The reduced tensor.

    Example:
        >>> import torch
        >>> logsumexp(torch.tensor([[0.0, 0.0], [100.0, -100.0]]), dim=1)
        tensor([  0.6931, 100.0000])
    """
    _check_tensor("logsumexp", input)
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if input.dim() == 0:
        return input.clone()
    m = torch.amax(input.detach(), dim=dims, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    out = m + torch.log(torch.sum(torch.exp(input - m), dim=dims, keepdim=True))
    return out if keepdim else out.squeeze(dims)


def softmax(
    input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> Tensor:
    """Softmax along ``dim``.

    ``m = max(input, dim)`` (a constant shift); ``e = exp(input - m)``;
    ``y = e / sum(e, dim)``.

    Args:
        input: any floating tensor.
        dim: the dimension that sums to one. ``None`` picks torch's legacy
            default (0 for 0-, 1- and 3-d inputs, else 1) without torch's warning.
        _stacklevel: accepted for signature compatibility, unused.
        dtype: if given, ``input`` is cast to it first.

    Returns:
        A tensor of the same shape whose slices along ``dim`` sum to one.

    Example:
        >>> import torch
        >>> softmax(torch.tensor([0.0, 0.0]), dim=0)
        tensor([0.5000, 0.5000])
    """
    _check_tensor("softmax", input)
    if dtype is not None:
        input = input.to(dtype)
    return _lean.softmax(input, _softmax_dim("softmax", input, dim))


def log_softmax(
    input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> Tensor:
    """Log-softmax along ``dim``, stable for any logits.

    ``m = max(input, dim)`` (a constant shift); ``z = input - m``;
    ``y = z - log(sum(exp(z), dim))``.

    Args:
        input: any floating tensor.
        dim: the normalised dimension (``None``: torch's legacy default, see
            :func:`softmax`).
        _stacklevel: accepted for signature compatibility, unused.
        dtype: if given, ``input`` is cast to it first.

    Returns:
        A tensor of the same shape with ``logsumexp(y, dim) == 0``.

    Example:
        >>> import torch
        >>> log_softmax(torch.tensor([100.0, -100.0]), dim=0)
        tensor([   0., -200.])
    """
    _check_tensor("log_softmax", input)
    if dtype is not None:
        input = input.to(dtype)
    return _lean.log_softmax(input, _softmax_dim("log_softmax", input, dim))


# The normalisations moved to fdl.nn._functional_norms; importable here too, for code
# written before the move (the public names are fdl.nn.functional.layer_norm, ...).
from fdl.nn._functional_norms import batch_norm, group_norm, layer_norm  # noqa: E402, F401
from fdl.nn._functional_norms import batch_stats as _batch_stats  # noqa: E402, F401
