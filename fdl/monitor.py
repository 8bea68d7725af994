"""Monitoring reporters for :func:`fdl.train.fit`: TensorBoard event files and non-finite checks.

Both are ordinary :mod:`fdl.reporting` reporters, passed as
``fit(..., reporters=[...])``:

- :class:`TensorBoard` writes loss, accuracy and learning rate per step,
  validation metrics per epoch, and, every ``histogram_every`` steps,
  histograms of params and grads and the update-to-param norm ratio
  ``‖u‖ / ‖p‖`` of every parameter (by dotted path).
- :class:`NonFinite` stops the run (or skips the step) when the loss, a
  gradient or an updated parameter is NaN or ±Inf, naming the step, the epoch
  and the dotted path of the first non-finite gradient or parameter, and keeps
  the last finite state (in the exception, and as a checkpoint if asked).

See ``docs/monitoring.md`` for the tags and a runnable example.

Example:
    >>> import torch, fdl
    >>> w = {"fc": {"weight": torch.tensor([1.0, float("nan")])}}
    >>> first_non_finite(w)
    'fc.weight'
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch

from fdl import checkpoint as _checkpoint
from fdl import reporting as _reporting
from fdl import tree as _tree

__all__ = ["NonFinite", "NonFiniteError", "TensorBoard", "first_non_finite", "update_ratios"]

_INSTALL = "pip install fdl[monitor]"


def first_non_finite(tree: Any) -> str | None:
    """The dotted path of the first leaf (in tree order) holding a NaN or ±Inf, else ``None``.

    Example:
        >>> import torch
        >>> first_non_finite({"a": torch.ones(2), "b": torch.tensor(float("inf"))})
        'b'
        >>> first_non_finite({"a": torch.ones(2)}) is None
        True
    """
    paths, leaves, _ = _tree.flatten_with_paths(tree)
    if not leaves:
        return None
    ok = torch.stack([torch.isfinite(x).all() for x in leaves]).tolist()  # one host sync
    for path, good in zip(paths, ok, strict=True):
        if not good:
            return path
    return None


def update_ratios(params: Any, updates: Any) -> dict[str, float]:
    """``‖u‖₂ / ‖p‖₂`` for every leaf, by dotted path: the size of a step relative to the weight.

    ``p`` is the parameter the update is applied to (before the step), ``u``
    the optimizer's update (``p_new = p + u``). A parameter with ``‖p‖ = 0``
    gets ``inf`` (or ``nan`` when ``‖u‖ = 0`` too).

    Example:
        >>> import torch
        >>> update_ratios({"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([0.3, 0.4])})
        {'w': 0.1...}
    """
    paths, ps, _ = _tree.flatten_with_paths(params)
    us = _tree.leaves(updates)
    if not ps:
        return {}
    norms = torch.stack(
        [
            torch.stack([u.detach().double().norm(), p.detach().double().norm()])
            for p, u in zip(ps, us, strict=True)
        ]
    )  # (leaves, 2)
    return {
        path: (un / pn if pn != 0 else (math.nan if un == 0 else math.inf))
        for path, (un, pn) in zip(paths, norms.tolist(), strict=True)
    }


def _every(n: int, name: str) -> int:
    if int(n) < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return int(n)


class TensorBoard(_reporting.Reporter):
    """Write a ``fit`` run to TensorBoard event files in ``log_dir``.

    Every ``every`` steps (``global_step % every == 0``, with
    ``global_step = (epoch - 1) * steps_per_epoch + step``): ``train/loss``
    (the step's mean loss), ``train/accuracy`` (the step's batch accuracy) and
    ``train/lr`` (``lr(global_step)`` for a schedule, the number itself for a
    float). Every ``histogram_every`` steps: ``params/<path>`` and
    ``grads/<path>`` histograms (the params the step started from and their
    gradients) and ``update_ratio/<path>`` = ``‖u‖ / ‖p‖``. After every epoch,
    at step ``epoch``: ``epoch/train_loss``, ``epoch/train_accuracy``,
    ``val/loss``, ``val/accuracy`` (those in the history record).

    Args:
        log_dir: folder for the event files (``tensorboard --logdir`` it).
        every: interval in steps for the per-step scalars.
        histogram_every: interval in steps for histograms and update ratios
            (those steps run ``fit``'s probe step, which also returns grads
            and updates); ``None`` turns them off.
        lr: the optimizer's learning rate, a float or a schedule
            ``lr(count) -> value`` (as passed to the optimizer); ``None``
            writes no ``train/lr``. The step count is taken to be
            ``global_step``, as for an optimizer state that advanced once per
            step of this run (resumed runs included; skipped steps do not
            advance the optimizer, so its schedule then lags).
        flush_secs: how often the writer flushes to disk.

    Raises:
        ImportError: ``tensorboard`` is not installed (``pip install fdl[monitor]``).

    Example:
        >>> import tempfile, torch, fdl
        >>> model = fdl.nn.Linear(4, 3)
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     tb = TensorBoard(d, every=1, histogram_every=2, lr=0.1)
        ...     res = fdl.train.fit(model.apply, fdl.losses.cross_entropy, fdl.optim.sgd(lr=0.1),
        ...                         model.init(fdl.random.key(0)), (x, y), key=fdl.random.key(1),
        ...                         batch_size=8, compile=False, progress=False, reporters=[tb])
        >>> len(res.history)
        1
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str],
        *,
        every: int = 1,
        histogram_every: int | None = 100,
        lr: float | Callable[[torch.Tensor], Any] | None = None,
        flush_secs: int = 30,
    ) -> None:
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - exercised without tensorboard only
            raise ImportError(
                f"fdl.monitor.TensorBoard needs the tensorboard package: {_INSTALL}"
            ) from e
        self.log_dir = os.fspath(log_dir)
        self.every = _every(every, "TensorBoard: every")
        self.histogram_every = (
            None
            if histogram_every is None
            else _every(histogram_every, "TensorBoard: histogram_every")
        )
        self.lr = lr
        self.writer = SummaryWriter(self.log_dir, flush_secs=flush_secs)

    def extras(self, global_step: int) -> set[str]:
        """Grads and updates on the histogram steps."""
        if self.histogram_every is not None and global_step % self.histogram_every == 0:
            return {"grads", "updates"}
        return set()

    def _lr(self, global_step: int) -> float:
        lr = self.lr
        if callable(lr):
            return float(lr(torch.tensor(global_step, dtype=torch.int64)))
        return float(lr)  # type: ignore[arg-type]

    def on_step(self, info: dict[str, Any]) -> None:
        g = info["global_step"]
        w = self.writer
        if g % self.every == 0:
            w.add_scalar("train/loss", float(info["loss"]), g)
            s = info["batch_sums"]
            if "correct" in s:
                w.add_scalar("train/accuracy", float(s["correct"]) / float(s["count"]), g)
            if self.lr is not None:
                w.add_scalar("train/lr", self._lr(g), g)
        if "grads" in info and "updates" in info and self.extras(g):
            prev = info["prev_params"]
            paths, ps, _ = _tree.flatten_with_paths(prev)
            for path, p in zip(paths, ps, strict=True):
                w.add_histogram(f"params/{path}", p.detach(), g)
            gpaths, gs, _ = _tree.flatten_with_paths(info["grads"])
            for path, gr in zip(gpaths, gs, strict=True):
                w.add_histogram(f"grads/{path}", gr.detach(), g)
            for path, r in update_ratios(prev, info["updates"]).items():
                w.add_scalar(f"update_ratio/{path}", r, g)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        e = record["epoch"]
        for key, tag in (
            ("train_loss", "epoch/train_loss"),
            ("train_accuracy", "epoch/train_accuracy"),
            ("val_loss", "val/loss"),
            ("val_accuracy", "val/accuracy"),
        ):
            if key in record:
                self.writer.add_scalar(tag, float(record[key]), e)
        self.writer.flush()

    def on_fit_end(self, info: dict[str, Any]) -> None:
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (a later write opens a new one)."""
        self.writer.close()


class NonFiniteError(FloatingPointError):
    """A training step produced a NaN or ±Inf loss, gradient or parameter.

    Attributes:
        epoch: the epoch (1-based) of the step.
        step: the step's index in its epoch (0-based).
        global_step: ``(epoch - 1) * steps_per_epoch + step``.
        path: dotted path of the first non-finite gradient (else parameter),
            or ``None`` when only the loss was checked and found non-finite.
        params, opt_state: the last finite state (the one the step started from).
    """

    def __init__(
        self,
        message: str,
        *,
        epoch: int,
        step: int,
        global_step: int,
        path: str | None,
        params: Any,
        opt_state: Any,
    ) -> None:
        super().__init__(message)
        self.epoch, self.step, self.global_step, self.path = epoch, step, global_step, path
        self.params, self.opt_state = params, opt_state


class NonFinite(_reporting.Reporter):
    """Stop (or skip the step) when the loss, a gradient or an updated parameter is not finite.

    Each checked step costs one host sync on ``isfinite(loss) ∧ all(isfinite(g))
    ∧ all(isfinite(p_new))``; only on failure are the leaves scanned to name
    the first bad one. Put it first in ``reporters`` so that no later reporter
    sees a bad step.

    Args:
        on_non_finite: ``"stop"`` raises :class:`NonFiniteError`; ``"skip"``
            drops the step (``fit`` continues from the state before it; the
            dropped step is recorded in :attr:`skipped`).
        check_grads: also check the gradients (``fit`` then runs its probe
            step, which returns them, on every checked step); otherwise the
            loss and the updated params are checked.
        every: check every ``every``-th step only (``global_step % every == 0``).
        checkpoint: on stop, also write the last finite state
            ``{"params", "opt_state"}`` to this path with
            :func:`fdl.checkpoint.save` (metadata: epoch, step, global_step, path).
        max_skips: with ``"skip"``, stop anyway once more than this many steps
            were skipped (``None``: no limit).

    Example:
        >>> import torch, fdl
        >>> loss = lambda out, y, reduction="none": (out - y) ** 2 * torch.log(y)  # y<0: nan
        >>> apply = lambda p, x, key=None, train=False: x * p["w"]
        >>> x, y = torch.ones(4), torch.tensor([1.0, 2.0, -1.0, 3.0])
        >>> try:
        ...     fdl.train.fit(apply, loss, fdl.optim.sgd(lr=0.1), {"w": torch.zeros(())}, (x, y),
        ...                   key=fdl.random.key(0), batch_size=4, accuracy=False,
        ...                   compile=False, progress=False, reporters=[NonFinite()])
        ... except NonFiniteError as e:
        ...     (e.epoch, e.step, e.path, float(e.params["w"]))
        (1, 0, 'w', 0.0)
    """

    def __init__(
        self,
        on_non_finite: str = "stop",
        *,
        check_grads: bool = True,
        every: int = 1,
        checkpoint: str | os.PathLike[str] | None = None,
        max_skips: int | None = None,
    ) -> None:
        if on_non_finite not in ("stop", "skip"):
            raise ValueError(
                f"NonFinite: on_non_finite must be 'stop' or 'skip', got {on_non_finite!r}"
            )
        self.on_non_finite = on_non_finite
        self.check_grads = bool(check_grads)
        self.every = _every(every, "NonFinite: every")
        self.checkpoint = checkpoint
        self.max_skips = max_skips
        self.skipped: list[dict[str, Any]] = []

    def extras(self, global_step: int) -> set[str]:
        """Grads on the checked steps, when ``check_grads``."""
        return {"grads"} if self.check_grads and global_step % self.every == 0 else set()

    def on_fit_start(self, info: dict[str, Any]) -> None:
        self.skipped = []

    def on_step(self, info: dict[str, Any]) -> None:
        g = info["global_step"]
        if g % self.every != 0:
            return
        loss, params, grads = info["loss"], info["params"], info.get("grads")
        ok = torch.isfinite(loss).all() & _tree.all_finite(params)
        if grads is not None:
            ok = ok & _tree.all_finite(grads)
        if bool(ok):  # the one host sync of a good step
            return
        self._fail(info, grads)

    def _fail(self, info: dict[str, Any], grads: Any) -> None:
        epoch, step, g = info["epoch"], info["step"], info["global_step"]
        loss = float(info["loss"])
        grad_path = first_non_finite(grads) if grads is not None else None
        param_path = first_non_finite(info["params"])
        path = grad_path if grad_path is not None else param_path
        parts = [f"loss is {loss}" if not math.isfinite(loss) else f"loss is finite ({loss})"]
        if grads is not None:
            parts.append(
                f"first non-finite gradient: {grad_path!r}" if grad_path else "gradients finite"
            )
        parts.append(
            f"first non-finite parameter after the update: {param_path!r}"
            if param_path
            else "updated parameters finite"
        )
        where = f"epoch {epoch}, step {step} (global step {g})"
        detail = "; ".join(parts)
        if self.on_non_finite == "skip":
            self.skipped.append(
                {"epoch": epoch, "step": step, "global_step": g, "path": path, "loss": loss}
            )
            if self.max_skips is None or len(self.skipped) <= self.max_skips:
                raise _reporting.SkipStep(f"non-finite step skipped at {where}: {detail}")
            detail += f"; more than max_skips={self.max_skips} steps skipped"
        kept = "the last finite state is in error.params / error.opt_state"
        if self.checkpoint is not None:
            _checkpoint.save(
                self.checkpoint,
                {"params": info["prev_params"], "opt_state": info["prev_opt_state"]},
                metadata={"epoch": epoch, "step": step, "global_step": g, "path": path},
            )
            kept += f" and saved to {os.fspath(self.checkpoint)!r}"
        raise NonFiniteError(
            f"non-finite training step at {where}: {detail}; {kept}",
            epoch=epoch,
            step=step,
            global_step=g,
            path=path,
            params=info["prev_params"],
            opt_state=info["prev_opt_state"],
        )
