"""``make_update``: one update-and-apply step, compiled, with opt-in buffer donation."""

from __future__ import annotations

from collections.abc import Callable

from fdl import _step
from fdl._compile import CompileArg
from fdl.optim.base import GradientTransformation, Params, State, Updates

__all__ = ["make_update"]


def make_update(
    optimizer: GradientTransformation,
    *,
    donate: bool = False,
    compile: CompileArg = True,
    backend: str | None = None,
    mode: str | None = None,
) -> Callable[[Updates, State, Params], tuple[Params, State]]:
    r"""Build ``step(grads, state, params) -> (new_params, new_state)``.

    ``step`` runs ``updates, state = optimizer.update(grads, state, params)`` and
    ``params = apply_updates(params, updates)`` as one function, by default
    under ``torch.compile(fullgraph=True)`` so the whole optimizer step fuses
    into a few kernels. Nothing that changes per step is a Python number, so it
    compiles once. It is the step core of :func:`fdl.train.make_train_step`
    with the gradients given instead of computed; its argument order follows
    ``GradientTransformation.update`` (``grads, state, params``).

    **Buffer donation** (``donate=True``, opt-in): the caller promises never to
    use the ``params`` and ``state`` it passes in again (as with JAX's
    ``donate_argnums``). ``step`` then writes the new values into those buffers
    and returns them, so the compiled kernel updates in place instead of
    allocating a fresh copy of params and state every step. Seen from the caller
    who keeps that promise the function is still pure: it only ever uses the
    returned trees. Requirements: no tensor appears twice in ``params``/``state``
    and ``grads`` does not alias them. Without donation nothing is modified.

    Args:
        optimizer: the gradient transformation.
        donate: reuse the buffers of ``params`` and ``state`` for the results.
        compile: ``True`` (``torch.compile(fullgraph=True)``), ``False``
            (eager) or a dict of ``torch.compile`` options, as every step builder.
        backend: shorthand for ``compile={"backend": backend}``.
        mode: shorthand for ``compile={"mode": mode}``.

    Returns:
        The step function, with a compile cache of its own.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.sgd(lr=0.5)
        >>> step = fdl.optim.make_update(opt, compile=False)
        >>> params = {"w": torch.ones(2)}
        >>> new_params, state = step({"w": torch.ones(2)}, opt.init(params), params)
        >>> new_params["w"], params["w"]
        (tensor([0.5000, 0.5000]), tensor([1., 1.]))
        >>> step = fdl.optim.make_update(opt, compile=False, donate=True)
        >>> p2, state = step({"w": torch.ones(2)}, opt.init(params), params)
        >>> p2["w"] is params["w"], params["w"]  # the donated buffer now holds the result
        (True, tensor([0.5000, 0.5000]))
    """
    if not isinstance(optimizer, GradientTransformation):
        raise TypeError(
            f"make_update expects a GradientTransformation; got {type(optimizer).__name__}"
        )
    # the step core with the gradients as its input: core(params, state, grads)
    core = _step.make_step(
        _given_grads, optimizer, donate=donate, compile=compile, backend=backend, mode=mode
    )

    def step(grads: Updates, state: State, params: Params) -> tuple[Params, State]:
        return core(params, state, grads)

    return step


def _given_grads(params: Params, grads: Updates) -> tuple[Updates]:
    return (grads,)
