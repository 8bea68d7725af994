"""Normalisations as pure functions: layer, group, batch, instance, RMS and local response norms.

Names, arguments and defaults follow ``torch.nn.functional``; each is written
out from its formula (mean and biased variance, then the affine map). The
layers of :mod:`fdl.nn.normalization` call these functions, so there is one
implementation of each formula. :func:`batch_stats` gives the per-channel batch
statistics BatchNorm also needs for its running averages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fdl.nn import _lean_norm as _lean
from fdl.nn._functional_activations import _check_tensor

__all__ = [
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "local_response_norm",
    "rms_norm",
]

Tensor = torch.Tensor


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, shape: Sequence[int]) -> Tensor:
    """``y * weight + bias``, each (when given) reshaped to ``shape`` to broadcast."""
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


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
    return _affine(_lean.standardize(input, dims, eps), weight, bias, shape)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group normalisation: statistics per sample over each group of channels.

    ``input`` of shape ``(N, C, *)`` is viewed as ``(N, G, C // G, *)``;
    ``mu`` and the biased ``var`` are taken over every axis after ``G``;
    ``y = (input - mu) / sqrt(var + eps)``, viewed back, then
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
    c = input.shape[1]
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
    # a view in every memory layout, so y keeps the input's (channels-last stays so)
    grouped = input.unflatten(1, (num_groups, c // num_groups))  # (N, G, C//G, *)
    dims = tuple(range(2, grouped.dim()))
    var, mu = torch.var_mean(grouped, dim=dims, correction=0, keepdim=True)  # biased variance
    y = ((grouped - mu) * torch.rsqrt(var + eps)).flatten(1, 2)  # (N, C, *)
    return _affine(y, weight, bias, (1, c) + (1,) * (input.dim() - 2))


def batch_stats(input: Tensor) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance of ``(N, C, *)`` and the count ``N * prod(*)``.

    ``mu = mean(input, dims)``, ``var = mean((input - mu)**2, dims)`` over every
    axis but the channel axis 1; ``count`` is the number of values per channel.

    Example:
        >>> import torch
        >>> mu, var, count = batch_stats(torch.tensor([[1.0], [3.0]]))
        >>> mu, var, count
        (tensor([2.]), tensor([1.]), 2)
    """
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
        mu, var, count = batch_stats(input)
        if count <= 1:
            raise ValueError(
                "batch_norm: expected more than 1 value per channel when training, got input "
                f"of shape {tuple(input.shape)}"
            )
    else:
        mu, var = running_mean, running_var
    y = (input - mu.reshape(shape)) * torch.rsqrt(var.reshape(shape) + eps)
    return _affine(y, weight, bias, shape)


def instance_stats(input: Tensor) -> tuple[Tensor, Tensor, int]:
    """Per-``(n, c)`` mean and biased variance of ``(N, C, *)`` and the count ``prod(*)``."""
    dims = tuple(range(2, input.dim()))
    var, mu = torch.var_mean(input, dim=dims, correction=0)  # (N, C) each
    return mu, var, input[0, 0].numel()


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Normalise each ``(n, c)`` slice of ``(N, C, *)`` over its spatial dimensions.

    ``use_input_stats=True``: ``mu[n, c]``, ``var[n, c]`` the mean and biased variance of
    ``input[n, c]``; otherwise ``mu = running_mean[c]``, ``var = running_var[c]``. Then
    ``y = (input - mu) / sqrt(var + eps) * weight[c] + bias[c]``.

    Note:
        Unlike torch this function is pure: ``running_mean``/``running_var`` are not
        updated and ``momentum`` is unused (see :class:`fdl.nn.InstanceNorm1d`).

    Example:
        >>> import torch
        >>> instance_norm(torch.tensor([[[1.0, 3.0]]])).flatten()
        tensor([-1.0000,  1.0000])
    """
    _check_tensor("instance_norm", input)
    if input.dim() < 3:
        raise ValueError(f"instance_norm: expected (N, C, *) input, got {tuple(input.shape)}")
    lead = input.shape[:2]
    spatial = (1,) * (input.dim() - 2)
    if use_input_stats:
        mu, var, count = instance_stats(input)
        if count <= 1:
            raise ValueError(
                "instance_norm: expected more than 1 spatial element when training, got input "
                f"of shape {tuple(input.shape)}"
            )
        mu, var = mu.reshape(*lead, *spatial), var.reshape(*lead, *spatial)  # (N, C, 1, ...)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm: use_input_stats=False needs running statistics")
        mu = running_mean.reshape(1, -1, *spatial)  # (1, C, 1, ...)
        var = running_var.reshape(1, -1, *spatial)
    y = (input - mu) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.reshape(1, -1, *spatial)
    if bias is not None:
        y = y + bias.reshape(1, -1, *spatial)
    return y


def rms_norm(
    input: Tensor,
    normalized_shape: Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """Root-mean-square normalisation over the trailing ``normalized_shape`` dimensions.

    ``y = input / sqrt(mean(input**2) + eps) * weight``, the mean over the last
    ``len(normalized_shape)`` dimensions; ``eps=None`` is ``torch.finfo(input.dtype).eps``.

    Example:
        >>> import torch
        >>> rms_norm(torch.tensor([[3.0, 4.0]]), (2,), eps=0.0)
        tensor([[0.8485, 1.1314]])
    """
    _check_tensor("rms_norm", input)
    shape = tuple(normalized_shape)
    k = len(shape)
    if tuple(input.shape[input.dim() - k :]) != shape:
        raise ValueError(
            f"rms_norm: input shape {tuple(input.shape)} does not end with normalized_shape {shape}"
        )
    if eps is None:
        eps = torch.finfo(input.dtype).eps
    dims = tuple(range(input.dim() - k, input.dim()))
    y = input * torch.rsqrt((input * input).mean(dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y


def local_response_norm(
    input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> Tensor:
    """Local response normalisation across channels (Krizhevsky et al., 2012).

    ``y[:, c] = input[:, c] / (k + alpha / size * sum_{c'} input[:, c']**2) ** beta`` with
    ``c'`` over ``[c - size // 2, c + (size - 1) // 2]`` (channels outside ``[0, C)`` count
    as zero).

    Args:
        input: ``(N, C, *)`` with at least one spatial dimension.
        size: the number of channels in each window.
        alpha: multiplicative factor.
        beta: exponent.
        k: additive factor.

    Returns:
        A tensor of ``input``'s shape.

    Example:
        >>> import torch
        >>> local_response_norm(torch.ones(1, 3, 1), 3, alpha=3.0, beta=1.0, k=0.0).flatten()
        tensor([0.5000, 0.3333, 0.5000])
    """
    _check_tensor("local_response_norm", input)
    if input.dim() < 3:
        raise ValueError(f"local_response_norm: expected 3 or more dimensions, got {input.dim()}")
    if input.numel() == 0:
        return input
    c = input.shape[1]
    sq = input * input
    before, after = size // 2, (size - 1) // 2
    zeros = torch.zeros_like(sq[:, :1])
    padded = torch.cat(
        [zeros.expand(-1, before, *sq.shape[2:]), sq, zeros.expand(-1, after, *sq.shape[2:])], 1
    )  # (N, C + size - 1, *)
    window = sum(padded[:, j : j + c] for j in range(size))  # (N, C, *)
    div = (window * (alpha / size) + k) ** beta
    return input / div
