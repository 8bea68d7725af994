"""Shared pieces of the attribution methods: target selection, gradients, baselines."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = [
    "Target",
    "as_baseline",
    "convergence_delta",
    "expand_target",
    "gradient",
    "per_example",
    "repeat_interleave_target",
    "require_key",
    "select_target",
    "sum_rows",
]

Tensor = torch.Tensor
# None, an index of the output's last axes (int / tuple of ints), or one class per example
Target = None | int | tuple[int, ...] | Sequence[int] | Tensor


def select_target(output: Tensor, target: Target) -> Tensor:
    """One scalar per example, ``(N,)``, picked from ``output`` by ``target`` (Captum's rule).

    * ``None``: ``output`` itself, which must hold one value per example
      (``(N,)`` or ``(N, 1)``);
    * an ``int`` or a 0-d tensor ``t``: ``output[..., t]`` of a 2-D output;
      a tuple of ints: the same index into the last axes;
    * a 1-D tensor or list of ``N`` ints: ``output[i, target[i]]``.
    """
    n = output.shape[0]
    if target is None:
        picked = output
    elif isinstance(target, int):
        picked = output[..., target]
    elif isinstance(target, tuple):
        picked = output[(Ellipsis, *target)]
    else:
        t = target if isinstance(target, Tensor) else torch.as_tensor(list(target))
        if t.ndim == 0:
            picked = output.index_select(-1, t.reshape(1).to(output.device)).squeeze(-1)
        else:
            if output.ndim != 2:
                raise ValueError(
                    "a target per example needs a 2-D output (N, classes), "
                    f"got {tuple(output.shape)}"
                )
            picked = output.gather(1, t.reshape(n, 1).to(output.device)).squeeze(1)  # (N,)
    if picked.numel() != n:
        raise ValueError(
            f"forward's output {tuple(output.shape)} with target {target!r} gives "
            f"{tuple(picked.shape)}, not one value per example; pass a target"
        )
    return picked.reshape(n)


def _per_example_target(target: Target) -> Tensor | None:
    """``target`` as an ``(N,)`` tensor when it names one class per example, else ``None``.

    ``None``, an ``int``, a ``tuple`` or a 0-d tensor applies to every example alike.
    """
    if target is None or isinstance(target, (int, tuple)):
        return None
    t = target if isinstance(target, Tensor) else torch.as_tensor(list(target))
    return None if t.ndim == 0 else t


def expand_target(target: Target, repeats: int) -> Target:
    """``target`` for ``repeats`` copies of the batch stacked along axis 0 (copy-major)."""
    t = _per_example_target(target)
    return target if t is None else t.repeat(repeats)  # (repeats * N,)


def repeat_interleave_target(target: Target, repeats: int) -> Target:
    """``target`` for a batch whose example ``i`` is repeated ``repeats`` times in a row."""
    t = _per_example_target(target)
    return target if t is None else t.repeat_interleave(repeats)  # (N * repeats,)


def gradient(forward: Callable[[Tensor], Tensor], inputs: Tensor, target: Target) -> Tensor:
    """``d/dx sum_i f(x)_i[target_i]``: each example's gradient of its own selected output.

    Examples are independent (the model has no batch interaction in eval mode),
    so the gradient of the sum is the per-example gradient, as in Captum.
    Written with ``torch.func.grad`` so it composes with ``vmap`` and ``torch.compile``.
    """
    return torch.func.grad(lambda x: select_target(forward(x), target).sum())(inputs)


def per_example(forward: Callable[[Tensor], Tensor], inputs: Tensor, target: Target) -> Tensor:
    """``f(x)_i[target_i]`` for every example, ``(N,)``."""
    return select_target(forward(inputs), target)


def sum_rows(t: Tensor) -> Tensor:
    """Sum of every example's entries: ``(N, ...) -> (N,)``."""
    return t.reshape(t.shape[0], -1).sum(1)


def convergence_delta(
    forward: Callable[[Tensor], Tensor],
    attributions: Tensor,
    inputs: Tensor,
    baselines: Tensor,
    target: Target,
) -> Tensor:
    """The completeness error of each row, ``(N,)``: ``sum(attr_i) - (f_t(x_i) - f_t(b_i))``."""
    return sum_rows(attributions) - (
        per_example(forward, inputs, target) - per_example(forward, baselines, target)
    )


def as_baseline(baselines: Tensor | float | None, inputs: Tensor) -> Tensor:
    """A baseline broadcasting against ``inputs``: zeros for ``None``, a scalar,
    one example ``inputs.shape[1:]`` or a batch ``inputs.shape`` (or batch 1)."""
    if baselines is None:
        return torch.zeros_like(inputs)
    b = torch.as_tensor(baselines, dtype=inputs.dtype, device=inputs.device)
    if b.ndim == 0:
        return b.expand_as(inputs)
    if b.shape == inputs.shape[1:]:
        return b.unsqueeze(0).expand_as(inputs)
    if b.shape == inputs.shape or (b.ndim == inputs.ndim and b.shape[0] == 1):
        return b.expand_as(inputs)
    raise ValueError(
        f"baselines of shape {tuple(b.shape)} do not match inputs {tuple(inputs.shape)}: "
        "give a scalar, one example's shape, or the inputs' shape"
    )


def require_key(key: Tensor | None, fn: str) -> Tensor:
    """The key a stochastic method needs; a clear error without one."""
    if key is None:
        raise ValueError(f"{fn} draws random numbers: pass key=fdl.random.key(seed)")
    return key
