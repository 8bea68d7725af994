"""Instance, RMS and local response normalisation as pure functions, formulas written out.

Names, arguments and defaults follow ``torch.nn.functional``. As fdl's ``batch_norm``,
``instance_norm`` does not update running statistics in place: the layers
(:mod:`fdl.nn.instance_norm`) return them in their state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["instance_norm", "local_response_norm", "rms_norm"]

Tensor = torch.Tensor


def _check_tensor(name: str, x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor input, got {type(x).__name__}")


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
