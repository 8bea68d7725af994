"""SmoothGrad, SmoothGrad-squared and VarGrad: an attribution averaged over noisy copies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import fdl.random
from fdl.explain._common import Target, repeat_interleave_target, require_key
from fdl.explain.gradient import saliency

__all__ = ["NT_TYPES", "noise_tunnel", "smooth_grad", "smooth_grad_sq", "vargrad"]

Tensor = torch.Tensor
Attribution = Callable[..., Tensor]

NT_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _expand_baselines(kwargs: dict[str, Any], n: int, s: int) -> dict[str, Any]:
    """Repeat a per-example ``baselines`` batch ``s`` times per example (Captum's rule)."""
    b = kwargs.get("baselines")
    if isinstance(b, Tensor) and b.ndim > 0 and b.shape[0] == n and n > 1:
        return {**kwargs, "baselines": b.repeat_interleave(s, dim=0)}  # (N*s, ...)
    return kwargs


def noise_tunnel(
    attribution: Attribution,
    forward: Callable[[Tensor], Tensor],
    inputs: Tensor,
    target: Target = None,
    *,
    nt_type: str = "smoothgrad",
    nt_samples: int = 5,
    nt_samples_batch_size: int | None = None,
    stdevs: float = 1.0,
    key: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """An attribution method smoothed over Gaussian noise (Captum's ``NoiseTunnel``).

    With ``z_is ~ N(0, 1)`` from ``key`` (one tensor of shape ``(N, nt_samples, ...)``,
    ``z = fdl.random.normal(key, (N, nt_samples, *inputs.shape[1:]))``) and
    ``a_is = attribution(forward, x_i + stdevs * z_is, target_i)``:

    * ``smoothgrad``:    ``mean_s a_is``
    * ``smoothgrad_sq``: ``mean_s a_is**2``
    * ``vargrad``:       ``mean_s a_is**2 - (mean_s a_is)**2``

    The noisy copies go through ``attribution`` in batches of
    ``nt_samples_batch_size`` samples per example (default: all at once),
    example-major (row ``i * s + j``), with ``target`` and a per-example
    ``baselines`` repeated to match.

    Args:
        attribution: an ``fdl.explain`` method, e.g. :func:`~fdl.explain.saliency`.
        forward, inputs, target: as for the method.
        nt_type: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
        nt_samples: number of noisy copies per example.
        nt_samples_batch_size: copies per example per call of ``attribution``.
        stdevs: standard deviation of the noise (in input units).
        key: an ``fdl.random`` key (required).
        **kwargs: passed to ``attribution`` (e.g. ``abs=False``, ``n_steps=20``).

    Returns:
        Attributions shaped like ``inputs``.

    Note:
        Captum draws the noise from the global torch RNG; here it is a pure
        function of ``key``. Convergence deltas of the inner method are not returned.

    Example:
        >>> import torch, fdl
        >>> f = lambda x: (x**2).sum(1)
        >>> a = fdl.explain.vargrad(f, torch.zeros(1, 3), nt_samples=4, stdevs=0.1,
        ...                         key=fdl.random.key(0))
        >>> a.shape
        torch.Size([1, 3])
    """
    if nt_type not in NT_TYPES:
        raise ValueError(f"nt_type must be one of {NT_TYPES}, got {nt_type!r}")
    key = require_key(key, "noise_tunnel")
    n, feat = inputs.shape[0], inputs.shape[1:]
    z = fdl.random.normal(key, (n, nt_samples, *feat), dtype=inputs.dtype).to(inputs.device)
    noisy = inputs.unsqueeze(1) + stdevs * z  # (N, nt_samples, ...)
    batch = nt_samples if nt_samples_batch_size is None else min(nt_samples, nt_samples_batch_size)
    total = torch.zeros_like(inputs)
    total_sq = torch.zeros_like(inputs)
    for start in range(0, nt_samples, batch):
        part = noisy[:, start : start + batch]
        s = part.shape[1]
        a = attribution(
            forward,
            part.reshape(n * s, *feat),  # (N*s, ...)
            repeat_interleave_target(target, s),
            **_expand_baselines(kwargs, n, s),
        ).reshape(n, s, *feat)
        total = total + a.sum(1)
        total_sq = total_sq + (a * a).sum(1)
    mean, mean_sq = total / nt_samples, total_sq / nt_samples
    if nt_type == "smoothgrad":
        return mean
    if nt_type == "smoothgrad_sq":
        return mean_sq
    return mean_sq - mean * mean


_EXAMPLE = """
    Example:
        >>> import torch, fdl
        >>> w = torch.tensor([[1.0, -2.0]])
        >>> fdl.explain.{name}(lambda x: x @ w.T, torch.zeros(1, 2), 0, key=fdl.random.key(0))
        {result}
"""


def _tunnel_method(name: str, nt_type: str, summary: str, result: str) -> Callable[..., Tensor]:
    """The public shortcut ``name``: :func:`noise_tunnel` with ``nt_type`` fixed.

    Its docstring is ``summary`` and an example on a linear ``forward`` whose
    printed result is ``result``.
    """

    def method(
        forward: Callable[[Tensor], Tensor],
        inputs: Tensor,
        target: Target = None,
        *,
        nt_samples: int = 5,
        nt_samples_batch_size: int | None = None,
        stdevs: float = 1.0,
        attribution: Attribution = saliency,
        key: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        return noise_tunnel(
            attribution,
            forward,
            inputs,
            target,
            nt_type=nt_type,
            nt_samples=nt_samples,
            nt_samples_batch_size=nt_samples_batch_size,
            stdevs=stdevs,
            key=key,
            **kwargs,
        )

    method.__name__ = method.__qualname__ = name
    method.__doc__ = summary + _EXAMPLE.format(name=name, result=result)
    return method


smooth_grad = _tunnel_method(
    "smooth_grad",
    "smoothgrad",
    """SmoothGrad (Smilkov et al., 2017): ``mean_s attribution(x + stdevs * z_s)``.

    :func:`noise_tunnel` with ``nt_type="smoothgrad"``; ``attribution`` defaults to
    :func:`~fdl.explain.saliency` (with its ``abs=True``; pass ``abs=False`` for
    the paper's signed gradients). On a linear ``forward`` the noise cancels.
    """,
    "tensor([[1., 2.]])",
)
smooth_grad_sq = _tunnel_method(
    "smooth_grad_sq",
    "smoothgrad_sq",
    "SmoothGrad-squared: ``mean_s attribution(x + stdevs * z_s)**2`` (:func:`noise_tunnel`).\n",
    "tensor([[1., 4.]])",
)
vargrad = _tunnel_method(
    "vargrad",
    "vargrad",
    "VarGrad (Adebayo et al., 2018): ``mean_s a_s**2 - (mean_s a_s)**2`` (:func:`noise_tunnel`).\n",
    "tensor([[0., 0.]])",
)
