"""Activations, the softmax family and normalisations as pure functions.

Names, arguments and defaults follow ``torch.nn.functional``. The softmax
family (``softmax``, ``log_softmax``, ``logsumexp``) and the normalisations
(``layer_norm``, ``group_norm``, ``batch_norm``) are written out from their
formulas; the pointwise activations are written from elementwise math so their
gradients at the kinks (``relu`` at 0, ``leaky_relu`` at 0, ...) equal torch's.

fdl is pure: the ``inplace`` arguments exist for signature compatibility and
only ``inplace=False`` is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "batch_norm",
    "elu",
    "gelu",
    "group_norm",
    "layer_norm",
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
    _no_inplace("relu", inplace)
    _check_tensor("relu", input)
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
    _no_inplace("leaky_relu", inplace)
    _check_tensor("leaky_relu", input)
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
    _no_inplace("elu", inplace)
    _check_tensor("elu", input)
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


def sigmoid(input: Tensor) -> Tensor:
    """Logistic sigmoid ``y = 1 / (1 + exp(-input))`` (torch's elementwise kernel).

    Example:
        >>> import torch
        >>> sigmoid(torch.tensor([0.0]))
        tensor([0.5000])
    """
    _check_tensor("sigmoid", input)
    return torch.sigmoid(input)


def tanh(input: Tensor) -> Tensor:
    """Hyperbolic tangent (torch's elementwise kernel).

    Example:
        >>> import torch
        >>> tanh(torch.tensor([0.0]))
        tensor([0.])
    """
    _check_tensor("tanh", input)
    return torch.tanh(input)


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    """Sigmoid linear unit (swish): ``y = input * sigmoid(input)``.

    Example:
        >>> import torch
        >>> silu(torch.tensor([0.0]))
        tensor([0.])
    """
    _no_inplace("silu", inplace)
    _check_tensor("silu", input)
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


def _stable_max(input: Tensor, dim: int) -> Tensor:
    """Row maximum used as the shift: detached, and 0 where the row has no finite maximum."""
    m = torch.amax(input.detach(), dim=dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


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
    d = _softmax_dim("softmax", input, dim)
    e = torch.exp(input - _stable_max(input, d))
    return e / torch.sum(e, dim=d, keepdim=True)


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
    d = _softmax_dim("log_softmax", input, dim)
    z = input - _stable_max(input, d)
    return z - torch.log(torch.sum(torch.exp(z), dim=d, keepdim=True))


# --------------------------------------------------------------------------- normalisation


def layer_norm(
    input: Tensor,
    normalized_shape: Sequence[int] | int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer normalisation over the trailing ``normalized_shape`` dimensions.

    With ``D`` the trailing dimensions: ``mu = mean(input, D)``,
    ``var = mean((input - mu)**2, D)`` (biased),
    ``y = (input - mu) / sqrt(var + eps) * weight + bias``.

    Args:
        input: tensor whose trailing dimensions equal ``normalized_shape``.
        normalized_shape: the trailing shape to normalise over.
        weight: optional scale of shape ``normalized_shape``.
        bias: optional shift of shape ``normalized_shape``.
        eps: added to the variance.

    Returns:
        A tensor of the same shape.

    Example:
        >>> import torch
        >>> layer_norm(torch.tensor([[1.0, 3.0]]), (2,))
        tensor([[-1.0000,  1.0000]])
    """
    _check_tensor("layer_norm", input)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or input.dim() < k or tuple(input.shape[input.dim() - k :]) != shape:
        raise ValueError(
            f"layer_norm: expected an input whose trailing dimensions are {shape} "
            f"(shape (*, {', '.join(map(str, shape))})), got {tuple(input.shape)}"
        )
    dims = tuple(range(input.dim() - k, input.dim()))
    var, mu = torch.var_mean(input, dim=dims, correction=0, keepdim=True)  # biased variance
    y = (input - mu) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group normalisation: statistics per sample over each group of channels.

    ``input`` of shape ``(N, C, *)`` is viewed as ``(N, G, C // G * prod(*))``;
    ``mu`` and the biased ``var`` are taken over the last axis;
    ``y = (input - mu) / sqrt(var + eps)``, reshaped back, then
    ``y * weight[c] + bias[c]`` per channel ``c``.

    Args:
        input: tensor of shape ``(N, C, *)``.
        num_groups: ``G``, dividing ``C``.
        weight: optional per-channel scale of shape ``(C,)``.
        bias: optional per-channel shift of shape ``(C,)``.
        eps: added to the variance.

    Returns:
        A tensor of the same shape.

    Example:
        >>> import torch
        >>> group_norm(torch.tensor([[[1.0], [3.0]]]), 1).flatten()
        tensor([-1.0000,  1.0000])
    """
    _check_tensor("group_norm", input)
    if input.dim() < 2:
        raise ValueError(
            f"group_norm: expected an input of shape (N, C, *), got {tuple(input.shape)}"
        )
    n, c = input.shape[0], input.shape[1]
    if num_groups <= 0 or c % num_groups != 0:
        raise ValueError(
            f"group_norm: the number of channels ({c}) must be divisible by num_groups "
            f"({num_groups})"
        )
    if input.numel() == 1:
        # torch's check (its statistics would be over a single value)
        raise ValueError(
            f"group_norm: expected more than 1 value in the input, got shape {tuple(input.shape)}"
        )
    grouped = input.reshape(n, num_groups, -1)  # (N, G, C//G * spatial)
    var, mu = torch.var_mean(grouped, dim=-1, correction=0, keepdim=True)  # biased variance
    y = ((grouped - mu) * torch.rsqrt(var + eps)).reshape(input.shape)
    affine_shape = (1, c) + (1,) * (input.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(affine_shape)
    if bias is not None:
        y = y + bias.reshape(affine_shape)
    return y


def _batch_stats(input: Tensor) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance of ``(N, C, *)`` and the count ``N * prod(*)``."""
    dims = (0, *range(2, input.dim()))
    count = input.numel() // input.shape[1]
    var, mu = torch.var_mean(input, dim=dims, correction=0)  # biased variance
    return mu, var, count


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalisation of ``(N, C, *)`` per channel.

    ``training=True`` (or no running statistics): ``mu``/``var`` are the
    batch mean and biased variance over every axis but ``C``; otherwise
    ``mu = running_mean``, ``var = running_var``. Then
    ``y = (input - mu) / sqrt(var + eps) * weight + bias``.

    Note:
        Unlike torch, this function is pure: it does *not* update
        ``running_mean``/``running_var`` in place, and ``momentum`` is unused.
        :class:`fdl.nn.BatchNorm1d`/:class:`fdl.nn.BatchNorm2d` return the
        updated running statistics in their state.

    Args:
        input: tensor of shape ``(N, C, *)``.
        running_mean: ``(C,)`` or ``None``.
        running_var: ``(C,)`` or ``None``.
        weight: optional per-channel scale ``(C,)``.
        bias: optional per-channel shift ``(C,)``.
        training: normalise by batch statistics.
        momentum: unused (see the note).
        eps: added to the variance.

    Returns:
        A tensor of the same shape.

    Example:
        >>> import torch
        >>> batch_norm(torch.tensor([[1.0], [3.0]]), None, None, training=True).flatten()
        tensor([-1.0000,  1.0000])
    """
    _check_tensor("batch_norm", input)
    if input.dim() < 2:
        raise ValueError(
            f"batch_norm: expected an input of shape (N, C, *), got {tuple(input.shape)}"
        )
    shape = (1, -1) + (1,) * (input.dim() - 2)
    if training or running_mean is None or running_var is None:
        mu, var, count = _batch_stats(input)
        if count <= 1:
            raise ValueError(
                "batch_norm: expected more than 1 value per channel when training, got input "
                f"of shape {tuple(input.shape)}"
            )
    else:
        mu, var = running_mean, running_var
    y = (input - mu.reshape(shape)) * torch.rsqrt(var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y
