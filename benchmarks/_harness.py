"""Timing helpers shared by every benchmark module.

Convention: each ``benchmarks/<name>.py`` defines ``run(quick: bool = False) ->
list[Result]`` and, under ``if __name__ == "__main__"``, prints
``format_table(run())``. ``python -m benchmarks`` collects them all.
Ratios are always measured side by side in one process: warm-up first, then
several repeats, and medians.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (its models are the benchmarks' models)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Timing:
    """Wall-clock seconds per call over ``len(times)`` repeats."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)


@dataclass
class Result:
    """One peer's measurement on one workload."""

    workload: str
    peer: str
    median_s: float
    min_s: float
    max_s: float
    repeats: int
    compile_s: float | None = None
    peak_mem_mb: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 10, number: int = 1
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timings of ``number`` calls.

    Each timing is divided by ``number`` (seconds per call).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return Timing(times)


def time_first_call(fn: Callable[[], Any]) -> float:
    """Seconds taken by one call (use on a fresh compiled function for compile time)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def result(workload: str, peer: str, timing: Timing, **kwargs: Any) -> Result:
    """Build a :class:`Result` from a :class:`Timing`."""
    return Result(
        workload=workload,
        peer=peer,
        median_s=timing.median,
        min_s=timing.min,
        max_s=timing.max,
        repeats=len(timing.times),
        **kwargs,
    )


def per_gemm_note(ms: dict[str, float]) -> str:
    """``"fwd1 0.41, ... ms"``: the time of each named matmul (milliseconds), for a note column.

    Example:
        >>> per_gemm_note({"fwd1": 0.4123, "wgrad1": 0.5})
        'fwd1 0.412, wgrad1 0.500 ms'
    """
    return ", ".join(f"{k} {v:.3f}" for k, v in ms.items()) + " ms"


def workload_tables(
    results: list[Result],
    baseline_peer: str,
    header: Callable[[Result], list[str]],
    row: Callable[[Result, Result], str],
) -> str:
    """A markdown table per workload: ``header(base)`` lines, then ``row(r, base)`` per result.

    ``base`` is the workload's ``baseline_peer`` result (its first result if absent).
    """
    out: list[str] = []
    workloads: dict[str, list[Result]] = {}
    for r in results:
        workloads.setdefault(r.workload, []).append(r)
    for name, rows in workloads.items():
        base = next((r for r in rows if r.peer == baseline_peer), rows[0])
        out += [f"### {name}\n", *header(base), *(row(r, base) for r in rows), ""]
    return "\n".join(out)


def format_table(results: list[Result], baseline_peer: str = "fdl") -> str:
    """A markdown table per workload: median, min-max, and time relative to ``baseline_peer``.

    The ratio column is ``peer median / baseline median`` (> 1: the peer is slower).
    """

    def header(base: Result) -> list[str]:
        return [
            f"| peer | median (ms) | min–max (ms) | time / {base.peer} | compile (s) | note |",
            "|---|---:|---:|---:|---:|---|",
        ]

    def row(r: Result, base: Result) -> str:
        comp = f"{r.compile_s:.1f}" if r.compile_s is not None else ""
        return (
            f"| {r.peer} | {r.median_s * 1e3:.3f} | {r.min_s * 1e3:.3f}–{r.max_s * 1e3:.3f} "
            f"| {r.median_s / base.median_s:.2f}× | {comp} | {r.note} |"
        )

    return workload_tables(results, baseline_peer, header, row)


def allocator_note() -> str:
    """The C allocator setting every peer runs under, to state beside every report."""
    import fdl.allocator
    from benchmarks._allocators import loaded_allocator

    preloaded = loaded_allocator()
    if preloaded is not None:
        conf = os.environ.get("MALLOC_CONF")
        return (
            f"{Path(preloaded).name} via LD_PRELOAD ({preloaded}"
            f"{f', MALLOC_CONF={conf}' if conf else ''}); glibc's malloc settings do not apply"
        )
    current = fdl.allocator.settings()
    if current is None:
        return "the C library's own (not glibc: fdl.allocator does nothing here)"
    if fdl.allocator.is_keeping_freed_memory():
        return f"freed CPU memory kept (fdl.allocator.keep_freed_memory(): {current.describe()})"
    return f"glibc's default policy, freed memory returned to the system ({current.describe()})"


def threads_note() -> str:
    """The torch thread count and the allocator setting, to state beside every table."""
    return f"torch threads: {torch.get_num_threads()}; allocator: {allocator_note()}"


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0  # kB
    raise KeyError(field)


def peak_mem_child(fn: Callable[[], Any]) -> float:
    """Peak resident-set growth (MB) over the set-up state while calling ``fn`` twice (Linux).

    Run it in a fresh process per peer: the first call does the lazy initialisation,
    then the peak (``VmHWM``) is reset to the current RSS and two more calls are made.
    """
    torch.set_num_threads(1)
    fn()  # first call: lazy initialisation
    gc.collect()
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    fn()
    fn()
    return _status_mb("VmHWM") - base


def peak_mem(
    module: str, peer: str, batch: int, *, timeout: float = 900, args: tuple[str, ...] = ()
) -> float | None:
    """``python -m <module> --mem PEER BATCH *args`` in a fresh process: its printed ``peak_mb``.

    The child runs under glibc's default allocator policy (it never calls
    ``fdl.allocator.keep_freed_memory()``): with freed memory kept, the first call's
    memory would stay mapped and the peak would not grow. ``None`` if the child fails.
    """
    cmd = [sys.executable, "-m", module, "--mem", peer, str(batch), *args]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
        return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError):
        return None
