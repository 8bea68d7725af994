"""Function forms of the layers, with ``torch.nn.functional``'s names and arguments.

Linear maps, convolutions and pooling call torch's kernels directly
(``F.linear``, ``F.conv2d``, ``F.max_pool2d``, ...), so code that intercepts
those kernels (per-sample gradients) sees them; the exception is eager 2x2
max-pooling, which goes through the faster custom ops of ``fdl/nn/_maxpool.py``.
``bilinear`` and ``dropout`` are written out; ``dropout`` takes an explicit
``fdl.random`` key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fdl import random as _random
from fdl.nn._functional_named import with_first
from fdl.nn._maxpool import _MaxPool2x2, max_pool2x2

__all__ = [
    "adaptive_avg_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "bilinear",
    "conv1d",
    "conv2d",
    "conv_transpose2d",
    "dropout",
    "embedding",
    "flatten",
    "linear",
    "max_pool1d",
    "max_pool2d",
]

_Size = int | tuple[int, ...] | list[int]


def linear(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Affine map :math:`y = x W^\top + b`.

    Args:
        input: ``(*, in_features)``.
        weight: ``(out_features, in_features)``.
        bias: ``(out_features,)`` or ``None``.

    Returns:
        ``(*, out_features)``.

    Example:
        >>> import torch
        >>> linear(torch.ones(2, 3), torch.ones(4, 3)).shape
        torch.Size([2, 4])
    """
    return F.linear(input, weight, bias)


def bilinear(
    input1: torch.Tensor,
    input2: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Bilinear map :math:`y_k = \sum_{ij} x^{(1)}_i W_{kij} x^{(2)}_j + b_k`.

    Args:
        input1: ``(*, in1_features)``.
        input2: ``(*, in2_features)`` with the same leading dimensions.
        weight: ``(out_features, in1_features, in2_features)``.
        bias: ``(out_features,)`` or ``None``.

    Returns:
        ``(*, out_features)``.

    Example:
        >>> import torch
        >>> bilinear(torch.ones(5, 2), torch.ones(5, 3), torch.ones(4, 2, 3)).shape
        torch.Size([5, 4])
    """
    # (*, i) x (k, i, j) -> (*, k, j), then contract j with input2
    y = torch.einsum("...kj,...j->...k", torch.einsum("...i,kij->...kj", input1, weight), input2)
    return y if bias is None else y + bias


def _conv(
    n: int,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _Size = 1,
    padding: _Size | str = 0,
    dilation: _Size = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``conv{n}d``: torch's kernel."""
    kernel = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    return kernel(input, weight, bias, stride, padding, dilation, groups)


# the arguments both convolution docstrings share, for ``{args}``
_CONV_ARGS = """bias: ``(C_out,)`` or ``None``.
        stride: step of the window (int or tuple).
        padding: int, tuple, ``"same"`` or ``"valid"`` (zero padding).
        dilation: spacing between kernel elements.
        groups: blocked connections from input to output channels."""

conv1d = with_first(
    _conv,
    1,
    "conv1d",
    r"""1-d cross-correlation :math:`y_{n,o,l} = b_o + \sum_{c,j} w_{o,c,j}\, x_{n,c,l s + j d}`.

    (``x`` zero-padded, ``c`` over the input channels of ``o``'s group; kernel ``F.conv1d``)

    Args:
        input: ``(N, C_in, L)`` or unbatched ``(C_in, L)``.
        weight: ``(C_out, C_in / groups, kL)``.
        {args}

    Returns:
        ``(N, C_out, L_out)`` with
        ``L_out = floor((L + 2 padding - dilation (kL - 1) - 1) / stride + 1)``.

    Example:
        >>> import torch
        >>> conv1d(torch.ones(1, 2, 5), torch.ones(3, 2, 3)).shape
        torch.Size([1, 3, 3])
    """.replace("{args}", _CONV_ARGS),
)

conv2d = with_first(
    _conv,
    2,
    "conv2d",
    r"""2-d cross-correlation :math:`y_{n,o} = b_o + \sum_{c} w_{o,c} \star x_{n,c}`.

    (:math:`\star` is 2-d cross-correlation with ``stride``, ``dilation`` and zero
    ``padding``; ``c`` runs over the input channels of ``o``'s group; kernel ``F.conv2d``)

    Args:
        input: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``.
        weight: ``(C_out, C_in / groups, kH, kW)``.
        {args}

    Returns:
        ``(N, C_out, H_out, W_out)`` with
        ``H_out = floor((H + 2 padding - dilation (kH - 1) - 1) / stride + 1)``.

    Example:
        >>> import torch
        >>> conv2d(torch.ones(1, 1, 28, 28), torch.ones(32, 1, 3, 3), padding=1).shape
        torch.Size([1, 32, 28, 28])

    """.replace("{args}", _CONV_ARGS),
)


def _conv_transpose(
    n: int,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _Size = 1,
    padding: _Size = 0,
    output_padding: _Size = 0,
    groups: int = 1,
    dilation: _Size = 1,
) -> torch.Tensor:
    """``conv_transpose{n}d``: torch's kernel."""
    kernel = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    return kernel(input, weight, bias, stride, padding, output_padding, groups, dilation)


conv_transpose2d = with_first(
    _conv_transpose,
    2,
    "conv_transpose2d",
    """Transposed 2-d convolution: the gradient of ``conv2d`` with respect to its input.

    (kernel: ``F.conv_transpose2d``)

    Args:
        input: ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``.
        weight: ``(C_in, C_out / groups, kH, kW)``.
        bias: ``(C_out,)`` or ``None``.
        stride: upsampling step.
        padding: removed from both sides of the output.
        output_padding: added to one side of the output.
        groups: blocked connections from input to output channels.
        dilation: spacing between kernel elements.

    Returns:
        ``(N, C_out, H_out, W_out)`` with
        ``H_out = (H - 1) stride - 2 padding + dilation (kH - 1) + output_padding + 1``.

    Example:
        >>> import torch
        >>> conv_transpose2d(torch.ones(1, 2, 4, 4), torch.ones(2, 3, 3, 3), stride=2).shape
        torch.Size([1, 3, 9, 9])
    """,
)


def _max_pool(
    n: int,
    input: torch.Tensor,
    kernel_size: _Size,
    stride: _Size | None = None,
    padding: _Size = 0,
    dilation: _Size = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``max_pool{n}d``: torch's kernel, or for eager 2x2 windows fdl's faster one."""
    stride = kernel_size if stride is None else stride
    if (
        n == 2
        and not return_indices
        and not ceil_mode
        and _is_pair(kernel_size, 2)
        and _is_pair(stride, 2)
        and _is_pair(padding, 0)
        and _is_pair(dilation, 1)
        and _MaxPool2x2.applies(input)
    ):
        return max_pool2x2(input)
    kernel = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    return kernel(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


# the arguments both max-pool docstrings share, for ``{args}``
_MAX_POOL_ARGS = """kernel_size: window size.
        stride: window step (default ``kernel_size``).
        padding: implicit padding on both sides (``-inf``).
        dilation: spacing between window elements.
        ceil_mode: use ``ceil`` instead of ``floor`` for the output size.
        return_indices: also return the flat indices of the maxima."""

max_pool1d = with_first(
    _max_pool,
    1,
    "max_pool1d",
    """Max over sliding windows: ``y[n, c, l] = max_j x[n, c, l stride + j dilation]``.

    Args:
        input: ``(N, C, L)`` or ``(C, L)``.
        {args}

    Returns:
        ``(N, C, L_out)``.

    Example:
        >>> import torch
        >>> max_pool1d(torch.arange(6.0).reshape(1, 1, 6), 2)
        tensor([[[1., 3., 5.]]])
    """.replace("{args}", _MAX_POOL_ARGS),
)

max_pool2d = with_first(
    _max_pool,
    2,
    "max_pool2d",
    """Max over sliding ``kH x kW`` windows (kernel: ``F.max_pool2d``).

    Args:
        input: ``(N, C, H, W)`` or ``(C, H, W)``.
        {args}

    Returns:
        ``(N, C, H_out, W_out)``.

    Example:
        >>> import torch
        >>> max_pool2d(torch.ones(1, 1, 28, 28), 2).shape
        torch.Size([1, 1, 14, 14])
    """.replace("{args}", _MAX_POOL_ARGS),
)


def _is_pair(v: _Size, n: int) -> bool:
    return v == n or (isinstance(v, tuple | list) and len(v) == 2 and v[0] == v[1] == n)


def avg_pool1d(
    input: torch.Tensor,
    kernel_size: _Size,
    stride: _Size | None = None,
    padding: _Size = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> torch.Tensor:
    """Mean over sliding windows: ``y[n, c, l] = sum_j x[n, c, l stride + j] / divisor``.

    Args:
        input: ``(N, C, L)`` or ``(C, L)``.
        kernel_size: window size.
        stride: window step (default ``kernel_size``).
        padding: implicit padding on both sides (zeros).
        ceil_mode: use ``ceil`` instead of ``floor`` for the output size.
        count_include_pad: count the padded zeros in the divisor.

    Returns:
        ``(N, C, L_out)``.

    Example:
        >>> import torch
        >>> avg_pool1d(torch.arange(4.0).reshape(1, 1, 4), 2)
        tensor([[[0.5000, 2.5000]]])
    """
    stride = kernel_size if stride is None else stride
    return F.avg_pool1d(input, kernel_size, stride, padding, ceil_mode, count_include_pad)


def _avg_pool(
    n: int,
    input: torch.Tensor,
    kernel_size: _Size,
    stride: _Size | None = None,
    padding: _Size = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """``avg_pool{n}d`` for ``n`` 2 or 3 (``avg_pool1d`` has no ``divisor_override``)."""
    stride = kernel_size if stride is None else stride
    kernel = (F.avg_pool2d, F.avg_pool3d)[n - 2]
    return kernel(
        input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


avg_pool2d = with_first(
    _avg_pool,
    2,
    "avg_pool2d",
    """Mean over sliding ``kH x kW`` windows (kernel: ``F.avg_pool2d``).

    Args:
        input: ``(N, C, H, W)`` or ``(C, H, W)``.
        kernel_size: window size.
        stride: window step (default ``kernel_size``).
        padding: implicit padding on both sides (zeros).
        ceil_mode: use ``ceil`` instead of ``floor`` for the output size.
        count_include_pad: count the padded zeros in the divisor.
        divisor_override: a fixed divisor instead of the window count.

    Returns:
        ``(N, C, H_out, W_out)``.

    Example:
        >>> import torch
        >>> avg_pool2d(torch.ones(1, 1, 4, 4), 2).shape
        torch.Size([1, 1, 2, 2])
    """,
)


def adaptive_avg_pool2d(
    input: torch.Tensor, output_size: int | tuple[int | None, int | None]
) -> torch.Tensor:
    """Mean pooling to a fixed ``output_size`` (kernel: ``F.adaptive_avg_pool2d``).

    Output cell ``i`` averages input rows ``floor(i H / H_out)`` to
    ``ceil((i + 1) H / H_out) - 1`` (likewise columns).

    Args:
        input: ``(N, C, H, W)`` or ``(C, H, W)``.
        output_size: ``H_out`` (square) or ``(H_out, W_out)``; ``None`` keeps that size.

    Returns:
        ``(N, C, H_out, W_out)``.

    Example:
        >>> import torch
        >>> adaptive_avg_pool2d(torch.ones(1, 3, 7, 5), (2, 3)).shape
        torch.Size([1, 3, 2, 3])
    """
    return F.adaptive_avg_pool2d(input, output_size)


def dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    key: _random.Key | None = None,
) -> torch.Tensor:
    r"""Inverted dropout: :math:`y = x \cdot m / (1 - p)`, :math:`m \sim \text{Bernoulli}(1 - p)`.

    The mask is drawn from ``key`` (an ``fdl.random`` key), never from the
    global RNG; the same key gives the same mask. With ``training=False`` or
    ``p == 0`` the input is returned unchanged.

    Args:
        input: any shape.
        p: probability of zeroing an element, in ``[0, 1]``.
        training: apply dropout only when ``True``.
        inplace: must be ``False``: fdl never mutates its input (``True`` raises
            ``ValueError`` rather than silently not writing).
        key: an ``fdl.random`` key, required when ``training`` and ``p > 0``.

    Returns:
        A new tensor of ``input``'s shape.

    Note:
        Unlike ``torch.nn.functional.dropout`` the mask comes from ``key``, not
        the global RNG.

    Example:
        >>> import fdl, torch
        >>> y = dropout(torch.ones(1000), 0.5, key=fdl.random.key(0))
        >>> sorted(set(y.tolist()))
        [0.0, 2.0]
    """
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
    if inplace:
        raise ValueError("dropout: inplace=True is not supported; fdl never mutates its input")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    if key is None:
        raise ValueError(
            "dropout with training=True needs key=... (an fdl.random key) to draw its mask"
        )
    keep = _random.bernoulli(key, 1.0 - p, tuple(input.shape))
    return input * keep.to(input.dtype) * (1.0 / (1.0 - p))


def embedding(
    input: torch.Tensor,
    weight: torch.Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> torch.Tensor:
    r"""Look up rows of ``weight``: ``y[...] = weight[input[...]]``.

    With ``max_norm`` the looked-up rows are rescaled to norm at most
    ``max_norm``: :math:`w_i \cdot \text{max\_norm} / (\|w_i\|_p + 10^{-7})` for rows with
    :math:`\|w_i\|_p > \text{max\_norm}`.
    The gradient reaches ``weight`` as if the rescaled rows were the weight,
    as in torch.

    Args:
        input: integer indices of any shape.
        weight: ``(num_embeddings, embedding_dim)``.
        padding_idx: a row that receives no gradient.
        max_norm: renormalise rows whose norm exceeds this.
        norm_type: the ``p`` of the norm for ``max_norm``.
        scale_grad_by_freq: divide gradients by the frequency of each index in the batch.
        sparse: must be ``False`` (sparse gradients are not supported).

    Returns:
        ``(*input.shape, embedding_dim)``.

    Note:
        ``torch.nn.functional.embedding`` with ``max_norm`` rewrites the rows of
        ``weight`` in place; fdl leaves ``weight`` unchanged and rescales only
        the output.

    Example:
        >>> import torch
        >>> embedding(torch.tensor([[0, 2]]), torch.eye(3))
        tensor([[[1., 0., 0.],
                 [0., 0., 1.]]])
    """
    if sparse:
        raise ValueError("embedding: sparse=True is not supported (fdl uses dense gradients)")
    if input.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"embedding: input must hold integer indices, got dtype {input.dtype}")
    if padding_idx is not None and padding_idx < 0:
        padding_idx = weight.shape[0] + padding_idx
    if max_norm is not None:
        norms = torch.linalg.vector_norm(weight.detach(), ord=norm_type, dim=1, keepdim=True)
        factor = torch.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0)
        # value: the rescaled rows; gradient: straight to weight, as torch does
        weight = weight + (weight.detach() * factor - weight.detach())
    return F.embedding(input, weight, padding_idx, None, norm_type, scale_grad_by_freq, False)


def flatten(input: torch.Tensor, start_dim: int = 0, end_dim: int = -1) -> torch.Tensor:
    """Merge dimensions ``start_dim..end_dim`` into one, as ``torch.flatten``.

    Args:
        input: any shape.
        start_dim: first dimension to merge.
        end_dim: last dimension to merge.

    Returns:
        A view (where possible) with those dimensions merged.

    ``fdl.nn.Flatten`` flattens from dimension 1 (keeping the batch); this
    function, like ``torch.flatten``, starts at 0 by default.

    Example:
        >>> import torch
        >>> flatten(torch.ones(2, 3, 4), 1).shape
        torch.Size([2, 12])
    """
    return torch.flatten(input, start_dim, end_dim)
