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

import json
import math
import os
import time
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from fdl import data as _data
from fdl import random as _random
from fdl import tree as _tree

__all__ = [
    "FitResult",
    "evaluate",
    "fit",
    "make_eval_step",
    "make_train_step",
    "predict",
]

CompileArg = bool | Mapping[str, Any]


# --------------------------------------------------------------------------- compilation


def _fresh_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object.

    ``torch.compile`` keeps its compiled graphs on the code object, so steps
    built by repeated calls of a factory would share one cache (and its
    recompile limit). A copied code object gives every step its own.
    """
    code = fn.__code__.replace(co_name=fn.__code__.co_name)
    out = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    out.__qualname__, out.__doc__ = fn.__qualname__, fn.__doc__
    return out


def _maybe_compile(fn: Callable[..., Any], compile: CompileArg) -> Callable[..., Any]:
    if compile is False:
        return fn
    if compile is True:
        options: dict[str, Any] = {}
    elif isinstance(compile, Mapping):
        options = dict(compile)
    else:
        raise TypeError(
            "compile must be a bool or a dict of torch.compile options, "
            f"got {type(compile).__name__}"
        )
    options.setdefault("fullgraph", True)
    return torch.compile(_fresh_function(fn), **options)


def _apply_updates(params: Any, updates: Any) -> Any:
    # params + updates, kept in each parameter's dtype
    return _tree.map(lambda p, u: (p + u).to(p.dtype), params, updates)


# --------------------------------------------------------------------------- steps


def make_train_step(
    loss_fn: Callable[..., Any],
    optimizer: Any,
    *,
    has_aux: bool = False,
    compile: CompileArg = True,
) -> Callable[..., tuple[Any, ...]]:
    """Build ``step(params, opt_state, *batch) -> (params, opt_state, loss[, aux])``.

    With ``grads, loss = grad_and_value(loss_fn)(params, *batch)``::

        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = params + updates

    ``loss`` is the loss at the incoming params (what a torch loop reads
    before ``opt.step()``). The step is pure: its inputs are never modified.

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
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            "make_train_step: optimizer must be a GradientTransformation with init and "
            f"update, got {type(optimizer).__name__}"
        )
    grad_fn = torch.func.grad_and_value(loss_fn, argnums=0, has_aux=has_aux)

    def step(params: Any, opt_state: Any, *batch: Any) -> tuple[Any, ...]:
        grads, value = grad_fn(params, *batch)
        updates, new_state = optimizer.update(grads, opt_state, params)
        new_params = _apply_updates(params, updates)
        if has_aux:
            loss, aux = value
            return new_params, new_state, loss, aux
        return new_params, new_state, value

    return _maybe_compile(step, compile)


def make_eval_step(fn: Callable[..., Any], *, compile: CompileArg = True) -> Callable[..., Any]:
    """Build ``eval_step(params, *batch) -> fn(params, *batch)`` without gradient tracking.

    ``fn`` returns any pytree of tensors (a loss, logits, sums of correct
    predictions, ...). The step runs under ``torch.no_grad()`` and is compiled
    like :func:`make_train_step`'s.

    Example:
        >>> import torch
        >>> ev = make_eval_step(lambda p, x: x @ p["w"], compile=False)
        >>> ev({"w": torch.ones(2, requires_grad=True)}, torch.ones(3, 2)).requires_grad
        False
    """
    if not callable(fn):
        raise TypeError(f"make_eval_step: fn must be callable, got {type(fn).__name__}")

    def eval_step(params: Any, *batch: Any) -> Any:
        with torch.no_grad():
            return fn(params, *batch)

    return _maybe_compile(eval_step, compile)


# --------------------------------------------------------------------------- prediction


def _softmax(z: torch.Tensor) -> torch.Tensor:
    # softmax(z)_i = exp(z_i - max z) / sum_j exp(z_j - max z); also right for log-probabilities
    e = torch.exp(z - z.amax(dim=1, keepdim=True))
    return e / e.sum(dim=1, keepdim=True)


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
            return _softmax(z)
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
    return _summary(sums)


def _summary(sums: Mapping[str, torch.Tensor]) -> dict[str, float]:
    count = float(sums["count"])
    out = {"loss": float(sums["loss_sum"]) / count}
    if "correct" in sums:
        out["accuracy"] = float(sums["correct"]) / count
    return out


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


def _write_json(path: Path, history: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(history, indent=2) + "\n")
    os.replace(tmp, path)


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
) -> FitResult:
    """Train a model for ``epochs`` epochs with a compiled step; validate after each epoch.

    Each epoch ``e`` draws its keys from ``fold_in(key, e)``: the batch order
    (:func:`fdl.data.batches`), one key per step for the model (dropout) and
    one per batch for ``augment``, so a run is reproducible and a run resumed
    at ``start_epoch`` continues exactly as the uninterrupted one would. The
    training loss per step is the weighted mean
    ``sum(loss_i * w_i) / sum(w_i)`` over the batch, where the weight ``w`` is 0
    on the rows padding the final partial batch (one shape, no recompiles).

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
        progress: show a tqdm bar (loss, accuracy, samples/s).
        history_path: write the history as JSON here after every epoch.
        callback: called with each epoch's record.
        start_epoch: index of the first epoch (for resuming).
        eval_batch_size: batch size for validation.

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
    from tqdm.auto import tqdm

    x, y = train_data
    n = _data._check_arrays([x, y])
    if epochs < 0:
        raise ValueError(f"fit: epochs must be >= 0, got {epochs}")
    if opt_state is None:
        opt_state = optimizer.init(params)
    train_step = make_train_step(
        _masked_metrics(apply, loss, accuracy, train=True), optimizer, has_aux=True, compile=compile
    )
    eval_step = None
    if val_data is not None:
        eval_step = make_eval_step(_masked_metrics(apply, loss, accuracy, False), compile=compile)
    steps = _data.num_batches(n, batch_size)
    history: list[dict[str, Any]] = []
    for epoch in range(start_epoch, start_epoch + epochs):
        k_order, k_model, k_aug = _random.split(_random.fold_in(key, epoch), 3)
        model_keys = _random.split(k_model, steps)
        aug_keys = _random.split(k_aug, steps) if augment is not None else None
        bar = tqdm(
            total=n,
            unit="samples",
            desc=f"epoch {epoch + 1}/{start_epoch + epochs}",
            disable=not progress,
            leave=True,
        )
        sums: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        batches = _data.batches(x, y, batch_size=batch_size, key=k_order, pad=True)
        for i, (xb, yb, wb) in enumerate(batches):
            if aug_keys is not None:
                assert augment is not None  # aug_keys is only made when augment is given
                xb = augment(aug_keys[i], xb)
            params, opt_state, _, s = train_step(params, opt_state, xb, yb, wb, model_keys[i])
            sums = s if not sums else _tree.add(sums, s)
            bar.update(min(batch_size, n - i * batch_size))
            if progress and (i % 20 == 0 or i == steps - 1):
                seen = _summary(sums)
                post = {"loss": f"{seen['loss']:.4f}"}
                if accuracy:
                    post["acc"] = f"{seen['accuracy']:.4f}"
                post["samples/s"] = f"{bar.n / max(time.perf_counter() - t0, 1e-9):.0f}"
                bar.set_postfix(post)
        bar.close()
        elapsed = time.perf_counter() - t0
        summary = _summary(sums) if sums else {"loss": math.nan}
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
        if history_path is not None:
            _write_json(Path(history_path), history)
        if callback is not None:
            callback(record)
    return FitResult(params, opt_state, history)
