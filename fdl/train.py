"""Pure, compiled training and evaluation steps, batched prediction and a ``fit`` loop.

A train step is one pure function::

    params, opt_state, loss = step(params, opt_state, *batch)

built from a loss function and a :class:`fdl.optim.GradientTransformation`
with ``torch.func.grad_and_value`` and compiled once with
``torch.compile(fullgraph=True)``. Everything that changes from step to step
(params, optimizer state with its step count, batch, key) is a tensor, so the
compiled step never recompiles as long as the batch shapes stay the same;
:func:`fit`, :func:`evaluate` and :func:`predict` pad the final partial batch
and mask it out, so a whole run uses one shape.

Example:
    >>> import torch, fdl
    >>> from fdl.train import make_train_step
    >>> def loss_fn(params, x, y):
    ...     return ((x @ params["w"] - y) ** 2).mean()
    >>> opt = fdl.optim.sgd(lr=0.1)
    >>> params = {"w": torch.zeros(3)}
    >>> step = make_train_step(loss_fn, opt, compile=False)
    >>> x, y = torch.eye(3), torch.tensor([1.0, 2.0, 3.0])
    >>> params, state, loss = step(params, opt.init(params), x, y)
    >>> float(loss)
    4.666...
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from fdl import _compile, _layout, _step
from fdl import data as _data
from fdl import random as _random
from fdl import reporting as _reporting
from fdl import tree as _tree
from fdl._arrays import leading_size
from fdl._compile import CompileArg
from fdl._layout import MemoryFormat
from fdl.nn.functional import softmax
from fdl.optim.base import apply_updates

__all__ = [
    "CompileArg",
    "FitResult",
    "MemoryFormat",
    "evaluate",
    "fit",
    "grads_and_loss",
    "make_eval_step",
    "make_train_step",
    "predict",
]

GradTransform = Callable[..., Callable[..., tuple[Any, ...]]]


# --------------------------------------------------------------------------- steps


def grads_and_loss(
    loss_fn: Callable[..., Any], *, has_aux: bool = False
) -> Callable[..., tuple[Any, ...]]:
    """Build ``fn(params, *batch) -> (grads, loss[, aux])``, the train step's gradient function.

    ``grads = ∂ loss_fn(params, *batch) / ∂ params`` and ``loss`` its value at
    ``params`` (``torch.func.grad_and_value`` with respect to ``params`` only).

    Args:
        loss_fn: ``loss_fn(params, *batch) -> loss`` (a scalar tensor), or
            ``-> (loss, aux)`` with ``has_aux=True``.
        has_aux: ``loss_fn`` returns ``(loss, aux)``; ``fn`` returns ``aux`` third.

    Returns:
        The gradient function (the default ``grad_fn`` of :func:`make_train_step`).

    Example:
        >>> import torch
        >>> fn = grads_and_loss(lambda p, x: (p["w"] * x).sum())
        >>> fn({"w": torch.ones(2)}, torch.tensor([2.0, 3.0]))
        ({'w': tensor([2., 3.])}, tensor(5.))
    """
    grad_and_value = torch.func.grad_and_value(loss_fn, argnums=0, has_aux=has_aux)

    def fn(params: Any, *batch: Any) -> tuple[Any, ...]:
        grads, value = grad_and_value(params, *batch)
        return (grads, *value) if has_aux else (grads, value)

    return fn


def make_train_step(
    loss_fn: Callable[..., Any],
    optimizer: Any,
    *,
    has_aux: bool = False,
    compile: CompileArg = True,
    grad_fn: GradTransform = grads_and_loss,
    donate: bool = False,
    memory_format: MemoryFormat = "preserve",
) -> Callable[..., tuple[Any, ...]]:
    """Build ``step(params, opt_state, *batch) -> (params, opt_state, loss[, aux])``.

    With ``grads, loss = grad_fn(loss_fn)(params, *batch)`` (by default
    :func:`grads_and_loss`, i.e. ``torch.func.grad_and_value``)::

        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = fdl.optim.apply_updates(params, updates)

    ``loss`` is the loss at the incoming params (what a torch loop reads
    before ``opt.step()``). The step is pure: its inputs are never modified
    (unless ``donate=True``). Every fdl step builder is this one core with
    another ``grad_fn`` (DP-SGD: :func:`fdl.privacy.make_dp_train_step`) or a
    vmapped member axis (:func:`fdl.ensemble.make_ensemble_train_step`); see
    ``docs/training.md`` for the convention.

    Args:
        loss_fn: ``loss_fn(params, *batch) -> loss`` (a scalar tensor), or
            ``-> (loss, aux)`` with ``has_aux=True``; differentiated with
            respect to ``params`` only.
        optimizer: a ``GradientTransformation`` (``init``/``update`` pair).
        has_aux: ``loss_fn`` returns ``(loss, aux)``; the step returns ``aux``
            as a fourth value (computed at the incoming params).
        compile: ``True`` compiles with ``torch.compile(fullgraph=True)``;
            ``False`` runs eagerly; a dict is passed to ``torch.compile`` as
            options (``fullgraph`` defaults to ``True``), e.g.
            ``{"backend": "aot_eager"}`` or ``{"mode": "max-autotune"}``.
        grad_fn: the gradient transform: ``grad_fn(loss_fn, has_aux=has_aux)``
            returns ``fn(params, *inputs, **options) -> (grads, loss[, aux])``;
            the step then takes ``(params, opt_state, *inputs, **options)``.
        donate: the caller gives up the ``params`` and ``opt_state`` it passes
            in: the step writes the results into their buffers and returns
            them (no fresh copy per step; see :func:`fdl.optim.make_update`).
        memory_format: the memory layout the step runs in. ``"preserve"``
            (default): every tensor as it comes. ``"channels_last"``: every
            4-d floating-point param, optimizer-state and batch tensor gets
            ``torch.channels_last`` strides inside the step (5-d:
            ``channels_last_3d``), so convolutions, pooling and normalisation
            read and write NHWC memory; the returned params and state have the
            strides of the incoming ones, and equal the default's values (see
            "Memory layout" in ``docs/training.md`` for when it pays).

    Returns:
        The step function. Each call of ``make_train_step`` compiles its own
        step; the first call traces and compiles (seconds), later calls with
        the same shapes reuse it.

    Example:
        >>> import torch, fdl
        >>> loss_fn = lambda p, x: ((x * p["w"]) ** 2).sum()
        >>> opt = fdl.optim.sgd(lr=0.25)
        >>> step = make_train_step(loss_fn, opt, compile=False)
        >>> p = {"w": torch.tensor([1.0])}
        >>> p, s, loss = step(p, opt.init(p), torch.tensor([1.0]))
        >>> p["w"], loss
        (tensor([0.5000]), tensor(1.))
    """
    if not callable(loss_fn):
        raise TypeError(f"make_train_step: loss_fn must be callable, got {type(loss_fn).__name__}")
    _step.check_optimizer(optimizer, "make_train_step")
    _layout.check_memory_format(memory_format, "make_train_step")
    return _step.make_step(
        grad_fn(loss_fn, has_aux=has_aux),
        optimizer,
        donate=donate,
        compile=compile,
        memory_format=memory_format,
    )


def make_eval_step(
    fn: Callable[..., Any],
    *,
    compile: CompileArg = True,
    memory_format: MemoryFormat = "preserve",
) -> Callable[..., Any]:
    """Build ``eval_step(params, *batch) -> fn(params, *batch)`` without gradient tracking.

    ``fn`` returns any pytree of tensors (a loss, logits, sums of correct
    predictions, ...). The step runs under ``torch.no_grad()`` and is compiled
    like :func:`make_train_step`'s, in its ``memory_format``.

    Example:
        >>> import torch
        >>> ev = make_eval_step(lambda p, x: x @ p["w"], compile=False)
        >>> ev({"w": torch.ones(2, requires_grad=True)}, torch.ones(3, 2)).requires_grad
        False
    """
    if not callable(fn):
        raise TypeError(f"make_eval_step: fn must be callable, got {type(fn).__name__}")
    _layout.check_memory_format(memory_format, "make_eval_step")
    fn = _layout.eval_in_memory_format(fn, memory_format)

    def eval_step(params: Any, *batch: Any) -> Any:
        with torch.no_grad():
            return fn(params, *batch)

    return _compile.maybe_compile(eval_step, compile)


# --------------------------------------------------------------------------- prediction


_OUTPUTS = ("logits", "probs", "classes")


def predict(
    apply: Callable[[Any, torch.Tensor], torch.Tensor],
    params: Any,
    data: torch.Tensor,
    batch_size: int = 256,
    *,
    output: str = "logits",
    compile: CompileArg = False,
) -> torch.Tensor:
    """Run ``apply(params, x)`` over a whole dataset in batches; no sample is dropped.

    The final partial batch is padded to ``batch_size`` (so a compiled
    ``apply`` sees one shape) and the padding is cut from the result.

    Args:
        apply: ``apply(params, x) -> outputs`` of shape ``(batch, classes, ...)``
            (logits or log-probabilities), e.g. a layer's ``apply``.
        params: the model's parameters.
        data: inputs ``(N, ...)``.
        batch_size: rows per forward pass.
        output: ``"logits"`` (the outputs as they are), ``"probs"``
            (``exp(z - max z) / sum exp(z - max z)`` over axis 1, which gives
            the same probabilities for logits and log-probabilities) or
            ``"classes"`` (``argmax`` over axis 1, int64).
        compile: compile the forward pass (see :func:`make_train_step`).

    Returns:
        A tensor with ``N`` rows.

    Example:
        >>> import torch
        >>> apply = lambda p, x: x @ p
        >>> predict(apply, torch.eye(3), torch.eye(3)[[2, 0, 1, 2, 2]], 2, output="classes")
        tensor([2, 0, 1, 2, 2])
    """
    if output not in _OUTPUTS:
        raise ValueError(f"predict: output must be one of {_OUTPUTS}, got {output!r}")
    if data.shape[0] == 0:
        raise ValueError("predict: data is empty (0 samples)")

    def forward(params: Any, x: torch.Tensor) -> torch.Tensor:
        z = apply(params, x)
        if output == "probs":
            return softmax(z, dim=1)
        if output == "classes":
            return z.argmax(dim=1)
        return z

    step = make_eval_step(forward, compile=compile)
    outs = []
    for xb, w in _data.batches(data, batch_size=batch_size, pad=True):
        outs.append(step(params, xb)[: int(w.sum())])
    return torch.cat(outs)


# --------------------------------------------------------------------------- fit


class FitResult(NamedTuple):
    """What :func:`fit` returns: final params, optimizer state and the metrics history."""

    params: Any
    opt_state: Any
    history: list[dict[str, Any]]


def _masked_metrics(
    apply: Callable[..., torch.Tensor],
    loss: Callable[..., torch.Tensor],
    accuracy: bool,
    train: bool,
) -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """``fn(params, x, y, weight[, key]) -> (mean loss, sums)`` over a padded batch's real rows."""

    def metrics(
        params: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        key: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = apply(params, x, key=key, train=True) if train else apply(params, x)
        per = loss(out, y, reduction="none")  # (B,) or (B, ...)
        per = per.reshape(per.shape[0], -1).mean(dim=1)  # (B,)
        total = weight.sum()
        loss_sum = (per * weight).sum()
        sums = {"loss_sum": loss_sum.detach(), "count": total}
        if accuracy:
            hit = (out.argmax(dim=1) == y).to(weight.dtype)
            sums["correct"] = (hit * weight).sum()
        return loss_sum / total, sums

    return metrics


def _run_eval(
    step: Callable[..., Any], params: Any, data: Sequence[torch.Tensor], batch_size: int
) -> dict[str, float]:
    x, y = data
    sums: dict[str, torch.Tensor] = {}
    for xb, yb, wb in _data.batches(x, y, batch_size=batch_size, pad=True):
        _, s = step(params, xb, yb, wb)
        sums = s if not sums else _tree.add(sums, s)
    return _reporting.summarize(sums)


def evaluate(
    apply: Callable[..., torch.Tensor],
    loss: Callable[..., torch.Tensor],
    params: Any,
    data: Sequence[torch.Tensor],
    *,
    batch_size: int = 256,
    accuracy: bool = True,
    compile: CompileArg = False,
) -> dict[str, float]:
    """Mean loss (and accuracy) of ``apply(params, x)`` over every sample of ``data = (x, y)``.

    ``loss(outputs, y, reduction="none")`` gives per-sample losses (as
    ``fdl.losses.nll_loss``); the result is their mean over all ``N``
    samples, and ``accuracy`` the fraction where ``argmax(outputs, 1) == y``.
    The final partial batch is padded and masked, never dropped.

    Example:
        >>> import torch, fdl
        >>> apply = lambda p, x: x @ p
        >>> x, y = torch.eye(3), torch.tensor([0, 1, 1])
        >>> metrics = evaluate(apply, fdl.losses.cross_entropy, torch.eye(3), (x, y), batch_size=2)
        >>> metrics["accuracy"]
        0.666...
    """
    step = make_eval_step(_masked_metrics(apply, loss, accuracy, train=False), compile=compile)
    return _run_eval(step, params, data, batch_size)


class _EpochKeys(NamedTuple):
    """One epoch's keys, all from ``fold_in(key, epoch)``."""

    order: _random.Key  # the batch order
    model: _random.Key  # (steps, 2): one per step, for the model (dropout)
    augment: _random.Key | None  # (steps, 2): one per batch for ``augment``, if given

    @classmethod
    def of(cls, key: _random.Key, epoch: int, steps: int, augment: bool) -> _EpochKeys:
        k_order, k_model, k_aug = _random.split(_random.fold_in(key, epoch), 3)
        aug = _random.split(k_aug, steps) if augment else None
        return cls(k_order, _random.split(k_model, steps), aug)


def _train_epoch(
    step: _TrainStep,
    params: Any,
    opt_state: Any,
    data: Sequence[torch.Tensor],
    keys: _EpochKeys,
    batch_size: int,
    augment: Callable[[_random.Key, torch.Tensor], torch.Tensor] | None,
    reporters: Sequence[Any],
    info: dict[str, Any],
) -> tuple[Any, Any, dict[str, torch.Tensor], float]:
    """One pass over ``data`` in padded batches: ``(params, opt_state, sums, seconds)``."""
    x, y = data
    n = info["num_samples"]
    sums: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    first = (info["epoch"] - 1) * info["steps"]  # global index of this epoch's first step
    batches = _data.batches(x, y, batch_size=batch_size, key=keys.order, pad=True)
    for i, (xb, yb, wb) in enumerate(batches):
        if augment is not None and keys.augment is not None:
            xb = augment(keys.augment[i], xb)
        extras = _reporting.extras(reporters, first + i) if reporters else frozenset()
        prev = (params, opt_state, sums)
        got: dict[str, Any] = {}
        if extras:  # the probe step: the same update, also returning grads and updates
            params, opt_state, loss, s, got["grads"], got["updates"] = step.probe(
                params, opt_state, xb, yb, wb, keys.model[i]
            )
        else:
            params, opt_state, loss, s = step(params, opt_state, xb, yb, wb, keys.model[i])
        sums = s if not sums else _tree.add(sums, s)
        if reporters:
            done = min((i + 1) * batch_size, n)
            elapsed = time.perf_counter() - t0
            step_info = {
                "step": i,
                "global_step": first + i,
                "samples": done,
                "elapsed_s": elapsed,
                "loss": loss,
                "batch_sums": s,
                "sums": sums,
                "params": params,
                "opt_state": opt_state,
                "prev_params": prev[0],
                "prev_opt_state": prev[1],
                **got,
            }
            try:
                _reporting.notify(reporters, "on_step", {**info, **step_info})
            except _reporting.SkipStep:
                params, opt_state, sums = prev  # the step is dropped: state as before it
    return params, opt_state, sums, time.perf_counter() - t0


class _TrainStep:
    """The compiled train step, and (built on first use) its probe twin.

    ``probe`` makes the same update and also returns the gradients and the
    updates, for reporters that ask for them (:func:`fdl.reporting.extras`);
    it is compiled separately, so the plain step never changes or recompiles.
    """

    def __init__(
        self,
        grad_fn: Callable[..., tuple[Any, ...]],
        optimizer: Any,
        compile: CompileArg,
        memory_format: MemoryFormat = "preserve",
    ):
        self._grad_fn, self._optimizer, self._compile = grad_fn, optimizer, compile
        self._memory_format = memory_format
        self._step = _step.make_step(
            grad_fn, optimizer, compile=compile, memory_format=memory_format
        )
        self._probe: Callable[..., tuple[Any, ...]] | None = None

    def __call__(self, *args: Any) -> tuple[Any, ...]:
        return self._step(*args)

    def probe(self, *args: Any) -> tuple[Any, ...]:
        if self._probe is None:
            grad_fn, optimizer = self._grad_fn, self._optimizer

            def probe_step(params: Any, opt_state: Any, *inputs: Any) -> tuple[Any, ...]:
                grads, *outputs = grad_fn(params, *inputs)
                updates, new_state = optimizer.update(grads, opt_state, params)
                new_params = apply_updates(params, updates)
                return (new_params, new_state, *outputs, grads, updates)

            probe = _layout.with_memory_format(probe_step, self._memory_format)
            self._probe = _compile.maybe_compile(probe, self._compile)
        return self._probe(*args)


def fit(
    apply: Callable[..., torch.Tensor],
    loss: Callable[..., torch.Tensor],
    optimizer: Any,
    params: Any,
    train_data: Sequence[torch.Tensor],
    *,
    key: _random.Key,
    epochs: int = 1,
    batch_size: int = 64,
    opt_state: Any = None,
    val_data: Sequence[torch.Tensor] | None = None,
    augment: Callable[[_random.Key, torch.Tensor], torch.Tensor] | None = None,
    accuracy: bool = True,
    compile: CompileArg = True,
    progress: bool = True,
    history_path: str | os.PathLike[str] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    start_epoch: int = 0,
    eval_batch_size: int = 1000,
    reporters: Sequence[Any] = (),
    memory_format: MemoryFormat = "preserve",
) -> FitResult:
    """Train a model for ``epochs`` epochs with a compiled step; validate after each epoch.

    Each epoch ``e`` draws its keys from ``fold_in(key, e)``: the batch order
    (:func:`fdl.data.batches`), one key per step for the model (dropout) and
    one per batch for ``augment``, so a run is reproducible and a run resumed
    at ``start_epoch`` continues exactly as the uninterrupted one would. The
    training loss per step is the weighted mean
    ``sum(loss_i * w_i) / sum(w_i)`` over the batch, where the weight ``w`` is 0
    on the rows padding the final partial batch (one shape, no recompiles).

    Everything reported goes through reporters (:mod:`fdl.reporting`):
    ``progress``, ``history_path`` and ``callback`` build the default ones
    (:func:`fdl.reporting.default_reporters`); ``reporters`` adds more.

    Args:
        apply: the model's forward pass, called as
            ``apply(params, x, key=key, train=True)`` in training and
            ``apply(params, x)`` in evaluation (a layer's ``apply``).
        loss: per-sample loss ``loss(outputs, y, reduction="none")``, e.g.
            ``fdl.losses.nll_loss`` for log-probabilities.
        optimizer: a ``GradientTransformation``.
        params: initial parameters.
        train_data: ``(x, y)`` tensors with a common leading size.
        key: an ``fdl.random`` key.
        epochs: epochs to run.
        batch_size: training batch size.
        opt_state: optimizer state to resume from (default ``optimizer.init(params)``).
        val_data: ``(x, y)`` evaluated after every epoch (every sample).
        augment: ``augment(key, x) -> x`` applied to each training batch.
        accuracy: also report ``argmax(outputs, 1) == y`` accuracy.
        compile: see :func:`make_train_step`.
        progress: show a tqdm bar (loss, accuracy, samples/s):
            :class:`fdl.reporting.ProgressBar`.
        history_path: write the history as JSON here after every epoch:
            :class:`fdl.reporting.HistoryFile`.
        callback: called with each epoch's record: :class:`fdl.reporting.Callback`.
        start_epoch: index of the first epoch (for resuming).
        eval_batch_size: batch size for validation.
        reporters: further reporters (objects with ``on_step``,
            ``on_epoch_end``, ... hooks; see :mod:`fdl.reporting`), called
            after the default ones.
        memory_format: the layout of the train and validation steps (see
            :func:`make_train_step`); ``"channels_last"`` for convolutional
            models on CPU.

    Returns:
        :class:`FitResult` ``(params, opt_state, history)``; ``history`` has one
        dict per epoch: ``epoch`` (1-based), ``train_loss``, ``train_accuracy``,
        ``val_loss``, ``val_accuracy``, ``time_s``, ``samples_per_s``.

    Example:
        >>> import torch, fdl
        >>> model = fdl.nn.Linear(4, 3)
        >>> x = torch.randn(50, 4)
        >>> y = x[:, :3].argmax(1)
        >>> res = fit(model.apply, fdl.losses.cross_entropy, fdl.optim.adam(lr=0.1),
        ...           model.init(fdl.random.key(0)), (x, y), key=fdl.random.key(1),
        ...           epochs=2, batch_size=16, compile=False, progress=False)
        >>> [sorted(r) for r in res.history][0]
        ['epoch', 'samples_per_s', 'time_s', 'train_accuracy', 'train_loss']
    """
    x, y = train_data
    n = leading_size([x, y], "fit")
    if epochs < 0:
        raise ValueError(f"fit: epochs must be >= 0, got {epochs}")
    if opt_state is None:
        opt_state = optimizer.init(params)
    _step.check_optimizer(optimizer, "fit")
    _layout.check_memory_format(memory_format, "fit")
    train_step = _TrainStep(
        grads_and_loss(_masked_metrics(apply, loss, accuracy, train=True), has_aux=True),
        optimizer,
        compile,
        memory_format,
    )
    eval_step = None
    if val_data is not None:
        eval_step = make_eval_step(
            _masked_metrics(apply, loss, accuracy, False),
            compile=compile,
            memory_format=memory_format,
        )
    steps = _data.num_batches(n, batch_size)
    reps = [
        *_reporting.default_reporters(
            progress=progress, history_path=history_path, callback=callback
        ),
        *reporters,
    ]
    last = start_epoch + epochs
    _reporting.notify(
        reps,
        "on_fit_start",
        {
            "epochs": epochs,
            "start_epoch": start_epoch,
            "num_samples": n,
            "steps_per_epoch": steps,
            "batch_size": batch_size,
            "params": params,
            "opt_state": opt_state,
        },
    )
    history: list[dict[str, Any]] = []
    for epoch in range(start_epoch, last):
        info = {"epoch": epoch + 1, "last_epoch": last, "num_samples": n, "steps": steps}
        _reporting.notify(reps, "on_epoch_start", info)
        keys = _EpochKeys.of(key, epoch, steps, augment is not None)
        params, opt_state, sums, elapsed = _train_epoch(
            train_step, params, opt_state, (x, y), keys, batch_size, augment, reps, info
        )
        summary = _reporting.summarize(sums) if sums else {"loss": math.nan}
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": summary["loss"]}
        if accuracy:
            record["train_accuracy"] = summary.get("accuracy", math.nan)
        if eval_step is not None and val_data is not None:
            val = _run_eval(eval_step, params, val_data, eval_batch_size)
            record["val_loss"] = val["loss"]
            if accuracy:
                record["val_accuracy"] = val["accuracy"]
        record["time_s"] = elapsed
        record["samples_per_s"] = n / elapsed
        history.append(record)
        _reporting.notify(reps, "on_epoch_end", record)
    _reporting.notify(
        reps, "on_fit_end", {"history": history, "params": params, "opt_state": opt_state}
    )
    return FitResult(params, opt_state, history)
