"""Reporting for :func:`fdl.train.fit`: a small hook protocol and the reporters fit ships with.

``fit`` runs the loop; everything it tells the outside world goes through
reporters. A reporter is any object with some of these methods, each given a
dict (fit calls the ones that exist, in the order the reporters are listed):

==================  =====================================================================
hook                the dict it receives
==================  =====================================================================
``on_fit_start``    ``epochs``, ``start_epoch``, ``num_samples``, ``steps_per_epoch``,
                    ``batch_size``, ``params``, ``opt_state`` (the initial state)
``on_epoch_start``  ``epoch`` (1-based), ``last_epoch``, ``num_samples``, ``steps``
``on_step``         ``epoch``, ``step`` (0-based in the epoch), ``global_step``
                    (``(epoch - 1) * steps + step``), ``steps``, ``samples``
                    (seen so far in the epoch), ``num_samples``, ``elapsed_s``, ``loss``
                    (this step's mean loss, a 0-dim tensor), ``batch_sums`` (this
                    step's ``loss_sum``/``count``/``correct``), ``sums`` (their running
                    totals over the epoch), ``prev_params``/``prev_opt_state`` (the
                    state the step started from), ``params``/``opt_state`` (the state
                    it produced), and ``grads``/``updates`` on the steps where a
                    reporter asked for them (see :func:`extras`)
``on_epoch_end``    the epoch's history record (``epoch``, ``train_loss``, ...)
``on_fit_end``      ``history`` (every record of this run), ``params``, ``opt_state``
==================  =====================================================================

Tensors in ``on_step`` are handed over unread, so a reporter that does not
look at them costs no synchronisation; :func:`summarize` turns running sums
into floats. New monitoring (a TensorBoard writer, a non-finite check:
:mod:`fdl.monitor`) is one more reporter passed as ``fit(..., reporters=[...])``.

Two optional parts of the protocol let a reporter shape the loop:

- ``extras(global_step) -> set of names``: the extra values the reporter
  wants in that step's ``on_step`` dict, from ``{"grads", "updates"}``. On a
  step where any reporter asks, ``fit`` runs a second compiled step that makes
  the same update and also returns the gradients and optimizer updates; the
  plain step is never changed, so it never recompiles.
- raising :class:`SkipStep` from ``on_step`` drops the step: ``fit`` carries
  on from the params, optimizer state and running sums the step started from
  (reporters later in the list do not see the dropped step).

Example:
    >>> import torch
    >>> from fdl.reporting import Callback, summarize
    >>> seen = []
    >>> Callback(seen.append).on_epoch_end({"epoch": 1, "train_loss": 0.5})
    >>> seen
    [{'epoch': 1, 'train_loss': 0.5}]
    >>> summarize({"loss_sum": torch.tensor(3.0), "count": torch.tensor(4.0)})
    {'loss': 0.75}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "EXTRAS",
    "HOOKS",
    "Callback",
    "HistoryFile",
    "ProgressBar",
    "Reporter",
    "SkipStep",
    "default_reporters",
    "extras",
    "notify",
    "summarize",
]

HOOKS = ("on_fit_start", "on_epoch_start", "on_step", "on_epoch_end", "on_fit_end")


class Reporter:
    """Base class with every hook a no-op: subclass and override the hooks you need."""

    def on_fit_start(self, info: dict[str, Any]) -> None:
        """Called once before the first epoch."""

    def on_epoch_start(self, info: dict[str, Any]) -> None:
        """Called before each epoch's first step."""

    def on_step(self, info: dict[str, Any]) -> None:
        """Called after each train step."""

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        """Called with each epoch's history record (after validation)."""

    def on_fit_end(self, info: dict[str, Any]) -> None:
        """Called once after the last epoch."""


def notify(reporters: Sequence[Any], hook: str, info: dict[str, Any]) -> None:
    """Call ``reporter.<hook>(info)`` on every reporter that has the hook, in order.

    Example:
        >>> notify([Callback(print)], "on_epoch_end", {"epoch": 1})
        {'epoch': 1}
    """
    if hook not in HOOKS:
        raise ValueError(f"notify: unknown hook {hook!r}; the hooks are {HOOKS}")
    for r in reporters:
        fn = getattr(r, hook, None)
        if fn is not None:
            fn(info)


EXTRAS = frozenset({"grads", "updates"})


class SkipStep(Exception):
    """Raised by a reporter's ``on_step`` to drop the step (``fit`` keeps the state before it)."""


def extras(reporters: Sequence[Any], global_step: int) -> frozenset[str]:
    """The union of ``reporter.extras(global_step)`` over the reporters that have the method.

    Example:
        >>> class Wants(Reporter):
        ...     def extras(self, global_step):
        ...         return {"grads"} if global_step % 10 == 0 else set()
        >>> sorted(extras([Wants(), Callback(print)], 20)), sorted(extras([Wants()], 3))
        (['grads'], [])
    """
    out: set[str] = set()
    for r in reporters:
        fn = getattr(r, "extras", None)
        if fn is not None:
            out.update(fn(global_step))
    unknown = out - EXTRAS
    if unknown:
        raise ValueError(
            f"extras: unknown names {sorted(unknown)}; the extras are {sorted(EXTRAS)}"
        )
    return frozenset(out)


def summarize(sums: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Running sums to means: ``loss = loss_sum / count`` and ``accuracy = correct / count``."""
    count = float(sums["count"])
    out = {"loss": float(sums["loss_sum"]) / count}
    if "correct" in sums:
        out["accuracy"] = float(sums["correct"]) / count
    return out


class ProgressBar(Reporter):
    """A tqdm bar per epoch: samples done, running loss (and accuracy) and samples/s.

    Args:
        every: refresh the loss/accuracy text every ``every`` steps (and on the
            last), reading the running sums only then.
    """

    def __init__(self, every: int = 20) -> None:
        self.every = max(1, int(every))
        self._bar: Any = None

    def on_epoch_start(self, info: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=info["num_samples"],
            unit="samples",
            desc=f"epoch {info['epoch']}/{info['last_epoch']}",
            leave=True,
        )

    def on_step(self, info: dict[str, Any]) -> None:
        bar = self._bar
        if bar is None:
            return
        bar.update(info["samples"] - bar.n)
        i = info["step"]
        if i % self.every == 0 or i == info["steps"] - 1:
            seen = summarize(info["sums"])
            post = {"loss": f"{seen['loss']:.4f}"}
            if "accuracy" in seen:
                post["acc"] = f"{seen['accuracy']:.4f}"
            post["samples/s"] = f"{info['samples'] / max(info['elapsed_s'], 1e-9):.0f}"
            bar.set_postfix(post)

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class HistoryFile(Reporter):
    """Write the run's history (a JSON list of epoch records) to ``path`` after every epoch.

    The file is replaced atomically (written beside it, then renamed), so a
    reader never sees half a file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.history: list[dict[str, Any]] = []

    def on_fit_start(self, info: dict[str, Any]) -> None:
        self.history = []

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.history, indent=2) + "\n")
        os.replace(tmp, self.path)


class Callback(Reporter):
    """Call ``fn(record)`` with every epoch's history record."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        self.fn(record)


def default_reporters(
    *,
    progress: bool = True,
    history_path: str | os.PathLike[str] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> list[Reporter]:
    """The reporters ``fit``'s ``progress``, ``history_path`` and ``callback`` arguments ask for.

    Example:
        >>> [type(r).__name__ for r in default_reporters(progress=False, callback=print)]
        ['Callback']
    """
    out: list[Reporter] = []
    if progress:
        out.append(ProgressBar())
    if history_path is not None:
        out.append(HistoryFile(history_path))
    if callback is not None:
        out.append(Callback(callback))
    return out
