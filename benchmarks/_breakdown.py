"""Where a training step's time goes: profiler self time by kernel class, and the rest.

A step's wall time splits into the kernels it runs and what the framework adds
around them (Python, dispatch, autograd's engine, dynamo's guards, pytree
flattening, allocation). :func:`profile_breakdown` runs a step under
``torch.profiler`` and sums each event's *self* time into one class:

- ``conv fwd`` / ``conv bwd``: the convolutions (``aten::mkldnn_convolution``
  and the ops around it) and their backward (``aten::convolution_backward``);
- ``matmul fwd``: ``aten::addmm`` (every peer's forward linear layers; compiled
  code calls it as an extern kernel);
- ``matmul bwd``: ``aten::mm`` / ``aten::bmm`` (the input and weight gradients);
- ``pooling``: max-pooling forward and backward (torch's kernels, inductor's
  pooling kernels, and the scatter-add of an image-shaped pooling backward);
- ``elementwise``: ReLU forward and backward, bias gradients, every other kernel;
- ``loss``: log-softmax and NLL, forward and backward;
- ``Adam``: the optimizer update (everything under ``Optimizer.step`` of an
  eager loop, ``aten::_fused_adam_``, or the compiled step's fused update kernels);

Inductor's generated kernels show in the profile only when compiled with
``torch._inductor.config.cpp.enable_kernel_profile`` (:func:`kernel_profiling`);
they are classed by the ops their name lists (a fused kernel goes to the first
class of ``Adam``, ``loss``, ``elementwise`` whose ops it contains).
Allocation and view ops (``aten::empty``, ``aten::t``, ...) and every
non-kernel event (Python, autograd nodes, compiled-region wrappers) count as
framework time, reported as wall time minus the kernel classes
(:func:`framework_ms`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

CONV_FWD = "conv fwd"
CONV_BWD = "conv bwd"
MATMUL_FWD = "matmul fwd"
MATMUL_BWD = "matmul bwd"
POOLING = "pooling"
ELEMENTWISE = "elementwise"
LOSS = "loss"
ADAM = "Adam"
FRAMEWORK = "framework"
KERNEL_CLASSES = (CONV_FWD, CONV_BWD, MATMUL_FWD, MATMUL_BWD, POOLING, ELEMENTWISE, LOSS, ADAM)

_MATMUL = {"aten::addmm": MATMUL_FWD, "aten::mm": MATMUL_BWD, "aten::bmm": MATMUL_BWD}
_LOSS_OPS = {
    "aten::_log_softmax",
    "aten::log_softmax",
    "aten::_log_softmax_backward_data",
    "aten::nll_loss_forward",
    "aten::nll_loss_backward",
    "aten::scatter_reduce_",
    "aten::scatter_add_",
    "aten::gather",
}
_ADAM_OPS = {"aten::_fused_adam_", "aten::_fused_adam"}
# metadata and allocation: no arithmetic, framework time
_NO_KERNEL = {
    "aten::empty",
    "aten::empty_strided",
    "aten::empty_like",
    "aten::view",
    "aten::_unsafe_view",
    "aten::t",
    "aten::transpose",
    "aten::permute",
    "aten::as_strided",
    "aten::reshape",
    "aten::_reshape_alias",
    "aten::expand",
    "aten::detach",
    "aten::detach_",
    "aten::alias",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::select",
    "aten::slice",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::lift_fresh",
    "aten::result_type",
    "aten::item",
    "aten::_local_scalar_dense",
    "aten::set_",
    "aten::resize_",
}
# inductor kernel names list the ops they fuse: cpp_fused_<op>_<op>_..._<n>
_ADAM_TOKENS = {"addcmul", "lerp", "sqrt"}
_POOL_TOKENS = {"pool2d", "pool1d", "pool3d", "offsets"}
_SCATTER = {"aten::scatter_reduce_", "aten::scatter_add_", "aten::scatter_add"}
_LOSS_TOKENS = {"log", "exp", "amax", "gather", "scatter", "nll"}
_OPTIMIZER_STEP = "Optimizer.step"


def kernel_class(
    name: str, ancestors: Sequence[str] = (), shapes: Sequence[Sequence[int]] = ()
) -> str | None:
    """The class of one profiler event's self time, or ``None`` for framework time.

    Args:
        name: the event's name (``aten::addmm``, ``cpp_fused_relu_1``, ...).
        ancestors: the names of the events it runs inside, outermost first.
        shapes: the event's input shapes, where recorded: a scatter into a
            tensor of three or more dimensions is a pooling backward (the
            loss's scatter writes ``(B, classes)``).

    Returns:
        One of :data:`KERNEL_CLASSES`, or ``None``.

    Example:
        >>> kernel_class("aten::mm"), kernel_class("aten::t")
        ('matmul bwd', None)
        >>> kernel_class("graph_0_cpp_fused_relu_1")
        'elementwise'
        >>> kernel_class("aten::mul_", ["Optimizer.step#Adam.step"])
        'Adam'
        >>> kernel_class("aten::convolution_backward"), kernel_class("cpp_fused_max_pool2d_1")
        ('conv bwd', 'pooling')
        >>> kernel_class("aten::scatter_add_", shapes=[[64, 64, 576]])
        'pooling'
    """
    if "cpp_fused" in name:  # graph_0_cpp_fused_relu_1
        tokens = set(name.split("_"))
        if tokens & _ADAM_TOKENS:
            return ADAM
        if tokens & _POOL_TOKENS:
            return POOLING
        return LOSS if tokens & _LOSS_TOKENS else ELEMENTWISE
    if not name.startswith("aten::") or name in _NO_KERNEL:
        return None
    if name in _MATMUL:
        return _MATMUL[name]
    if "convolution" in name or name.startswith(("aten::conv1d", "aten::conv2d", "aten::conv3d")):
        return CONV_BWD if "backward" in name else CONV_FWD
    if "pool" in name or (name in _SCATTER and shapes and len(shapes[0]) >= 3):
        return POOLING
    if name in _ADAM_OPS or any(a.startswith(_OPTIMIZER_STEP) for a in ancestors):
        return ADAM
    return LOSS if name in _LOSS_OPS else ELEMENTWISE


def _ancestors(event: Any) -> list[str]:
    names = []
    parent = event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return names[::-1]


def classify_events(events: Sequence[Any]) -> dict[str, float]:
    """Self time (microseconds) of ``events`` (profiler ``FunctionEvent``\\ s) per kernel class.

    Example:
        >>> from types import SimpleNamespace as E
        >>> step = E(name="Optimizer.step#Adam.step", cpu_parent=None, self_cpu_time_total=5.0)
        >>> events = [
        ...     E(name="aten::addmm", cpu_parent=None, self_cpu_time_total=30.0),
        ...     E(name="aten::add_", cpu_parent=step, self_cpu_time_total=2.0),
        ...     step,
        ... ]
        >>> classify_events(events)["matmul fwd"], classify_events(events)["Adam"]
        (30.0, 2.0)
    """
    out = dict.fromkeys(KERNEL_CLASSES, 0.0)
    for e in events:
        cls = kernel_class(e.name, _ancestors(e), getattr(e, "input_shapes", None) or ())
        if cls is not None:
            out[cls] += e.self_cpu_time_total
    return out


def profile_breakdown(call: Callable[[], Any], steps: int = 10) -> dict[str, float]:
    """Milliseconds per call of ``call()`` in each kernel class, and ``framework``: the rest.

    Runs ``steps`` calls under ``torch.profiler`` (CPU activities) and times them
    there: ``framework`` is that wall time minus the kernel classes, so the
    classes add up to the profiled wall time even on a loaded machine, and the
    profiler's own cost (about a microsecond per event) is part of ``framework``.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            call()
        wall_ms = (time.perf_counter() - t0) / steps * 1e3
    us = classify_events(prof.events())
    return framework_ms({k: v / steps / 1e3 for k, v in us.items()}, wall_ms)


def framework_ms(breakdown: dict[str, float], wall_ms: float) -> dict[str, float]:
    """``breakdown`` with ``framework``: ``wall_ms`` minus the kernel classes.

    Example:
        >>> framework_ms({"matmul fwd": 1.0, "Adam": 0.5}, 2.0)["framework"]
        0.5
    """
    return {**breakdown, FRAMEWORK: wall_ms - sum(breakdown.values())}


def describe(breakdown: dict[str, float]) -> str:
    """``"matmul fwd 0.90, ..., framework 0.40 ms"``: the classes that are present.

    Example:
        >>> describe({"matmul fwd": 0.9, "loss": 0.0, "framework": 0.4})
        'matmul fwd 0.90, framework 0.40 ms'
    """
    parts = [f"{k} {v:.2f}" for k, v in breakdown.items() if abs(v) >= 0.005]
    return ", ".join(parts) + " ms"


@contextlib.contextmanager
def kernel_profiling() -> Iterator[None]:
    """Inductor's generated CPU kernels record themselves as profiler events while active.

    Compile (first-call) a step inside this block to profile its kernels; its
    code then carries a ``RECORD_FUNCTION`` per kernel, so time it apart from
    the step whose wall time is reported.
    """
    with torch._inductor.config.patch({"cpp.enable_kernel_profile": True}):
        yield


def markdown(rows: Sequence[Any]) -> str:
    """A table of the kernel classes of every result whose ``extra`` has a ``breakdown``.

    Results whose ``extra`` has ``pieces_ms`` (a peer timed piece by piece, as the
    JAX peer's jitted pieces) follow as one line each. Empty when no row has either.

    Example:
        >>> from types import SimpleNamespace as R
        >>> row = R(peer="fdl", extra={"breakdown": {"matmul fwd": 1.0, "framework": 0.5}})
        >>> print(markdown([row]).splitlines()[4])
        | fdl | 1.00 | 0.50 | 1.50 |
    """
    profiled = [r for r in rows if r.extra.get("breakdown")]
    pieces = [r for r in rows if r.extra.get("pieces_ms")]
    if not (profiled or pieces):
        return ""
    # the classes some row has time in (an MLP has no convolutions)
    used = [c for c in KERNEL_CLASSES if any(r.extra["breakdown"].get(c) for r in profiled)]
    cols = (*used, FRAMEWORK)
    out = []
    if profiled:
        out += [
            "Where the time goes (ms per step; profiler self time per kernel class, framework "
            "= profiled wall time minus the kernels):",
            "",
            "| peer | " + " | ".join(cols) + " | profiled wall |",
            "|---|" + "---:|" * (len(cols) + 1),
        ]
        for r in profiled:
            b = r.extra["breakdown"]
            vals = [b.get(c, 0.0) for c in cols]
            out.append(f"| {r.peer} | " + " | ".join(f"{v:.2f}" for v in (*vals, sum(vals))) + " |")
        out.append("")
    for r in pieces:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r.extra["pieces_ms"].items())
        out += [f"{r.peer}, jitted pieces timed alone (ms): {parts}.", ""]
    return "\n".join(out)
