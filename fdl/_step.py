"""The step core: the one function every state-carrying step builder wraps.

A step takes the training state first and the per-step inputs after it::

    params, opt_state, *outputs = step(params, opt_state, *inputs, **options)

and is, for a gradient function ``grad_fn(params, *inputs, **options) ->
(grads, *outputs)``::

    grads, *outputs = grad_fn(params, *inputs, **options)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = fdl.optim.apply_updates(params, updates)

The builders differ only in ``grad_fn``: ``torch.func.grad_and_value`` of the
loss (:func:`fdl.train.make_train_step`), the clipped and noised DP-SGD
gradient (:func:`fdl.privacy.make_dp_train_step`), the gradients given as an
input (:func:`fdl.optim.make_update`); :func:`fdl.ensemble.make_ensemble_train_step`
vmaps the eager core step over a leading member axis. Compilation goes
through :func:`fdl._compile.maybe_compile`, and the memory layout the step runs
in (``memory_format=``) through :func:`fdl._layout.with_memory_format`.

Example:
    >>> import torch, fdl
    >>> from fdl._step import make_step
    >>> opt = fdl.optim.sgd(lr=0.5)
    >>> step = make_step(lambda p, g: (g,), opt, compile=False)  # the gradients are the input
    >>> p = {"w": torch.ones(2)}
    >>> step(p, opt.init(p), {"w": torch.ones(2)})[0]
    {'w': tensor([0.5000, 0.5000])}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fdl import _compile, _layout
from fdl import tree as _tree
from fdl.optim.base import apply_updates

__all__ = ["check_optimizer", "donate_into", "make_step"]


def check_optimizer(optimizer: Any, who: str) -> None:
    """TypeError naming ``who`` unless ``optimizer`` has ``init`` and ``update``."""
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"{who}: optimizer must be a GradientTransformation with init and update, "
            f"got {type(optimizer).__name__}"
        )


def donate_into(old: Any, new: Any) -> Any:
    """Write every leaf of ``new`` into the matching leaf of ``old`` and return ``old``.

    The caller gives up ``old`` (buffer donation, as JAX's ``donate_argnums``):
    the compiled kernel then updates in place instead of allocating a fresh
    copy of params and state every step.
    """
    for dst, src in zip(_tree.leaves(old), _tree.leaves(new), strict=True):
        dst.copy_(src)
    return old


def make_step(
    grad_fn: Callable[..., tuple[Any, ...]],
    optimizer: Any,
    *,
    donate: bool = False,
    compile: _compile.CompileArg = True,
    memory_format: _layout.MemoryFormat = "preserve",
    **compile_aliases: Any,
) -> Callable[..., tuple[Any, ...]]:
    """Build ``step(params, opt_state, *inputs, **options) -> (params, opt_state, *outputs)``.

    Args:
        grad_fn: ``grad_fn(params, *inputs, **options) -> (grads, *outputs)``.
        optimizer: a ``GradientTransformation``.
        donate: write the new params and state into the buffers of the ones
            passed in (see :func:`donate_into`); without it nothing is modified.
        compile: see :data:`fdl._compile.CompileArg`.
        memory_format: ``"preserve"`` runs on the tensors as they come;
            ``"channels_last"`` on channels-last strides of every 4-d
            floating-point param, state and input tensor, returning params and
            state with the incoming strides (see :mod:`fdl._layout`).
        compile_aliases: older single-option spellings (``backend=``, ``mode=``).

    Returns:
        The step, with a compile cache of its own.
    """

    def update(params: Any, opt_state: Any, *inputs: Any, **options: Any) -> tuple[Any, ...]:
        grads, *outputs = grad_fn(params, *inputs, **options)
        updates, new_state = optimizer.update(grads, opt_state, params)
        return (apply_updates(params, updates), new_state, *outputs)

    update = _layout.with_memory_format(update, memory_format)

    def step(params: Any, opt_state: Any, *inputs: Any, **options: Any) -> tuple[Any, ...]:
        new_params, new_state, *outputs = update(params, opt_state, *inputs, **options)
        if donate:
            new_params, new_state = donate_into((params, opt_state), (new_params, new_state))
        return (new_params, new_state, *outputs)

    return _compile.maybe_compile(step, compile, **compile_aliases)
