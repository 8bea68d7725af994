"""The largest batch whose DP-SGD step fits in a memory cap (default 8 GiB): fdl against Opacus.

For each model of ``benchmarks/dp_step.py`` (the document's MNIST CNN and the Transformer
text classifier) and each DP peer (``fdl dp step``, ``opacus hooks``, ``opacus ghost``),
:func:`search` finds the largest batch ``B`` whose process peaks at no more than the cap.

One probe (:func:`probe`) is a fresh ``python -m benchmarks.max_batch --probe MODEL PEER B
CAP_MB``: it builds the step exactly as ``dp_step`` times it, runs two steps (the first
allocates the optimizer state) and prints its peak resident set (``VmHWM``, the whole
process: interpreter, libraries, data, model; about 0.7 GB at batch 1, mostly torch's
and Opacus's libraries) and the second step's wall time. A watchdog
thread ends the child as soon as its resident set passes the cap, so a probe never holds
much more than the cap. The child uses torch's default thread count (``OMP_NUM_THREADS``
sets it); it runs under glibc's default allocator policy (it never
calls ``fdl.allocator.keep_freed_memory()``), so freed memory leaves the resident set.

The search: doubling from ``start`` until three batches fit, the least-squares line
``peak = a + b·B`` through the fitting probes predicts the batch at the cap; the next
probe is that prediction over ``1 + tol / 2`` (just below the cap; at most ``GROWTH`` =
256 × and at least ``1 + tol`` times the largest fitting batch); once a batch fails,
bisection between the largest fitting and the smallest failing batch until they are
within ``tol`` (5 %). With memory linear in ``B`` that is five probes: three small ones,
the prediction, and ``1 + tol`` times it (four with ``--quick``, which trusts the line
once its prediction fits).

Run::

    python -m benchmarks.max_batch                  # cap 8 GiB, both models, all peers
    python -m benchmarks.max_batch --cap-mb 1024    # a small cap, to check the plumbing
    python -m benchmarks.max_batch --model cnn --peer "fdl dp step"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._harness import Result, Timing, _status_mb, result, workload_tables

PEERS = ("fdl dp step", "opacus hooks", "opacus ghost")
CAP_MB = 8 * 1024.0
QUICK_CAP_MB = 1024.0
GROWTH = 256  # the most one probe may grow the batch over the largest that fit


@dataclass
class Probe:
    """One measurement: the process's peak (MB) at ``batch``, and whether it fit the cap."""

    batch: int
    peak_mb: float
    fits: bool
    step_s: float | None = None  # the second step's wall time (s), if it ran


def _line(points: list[Probe]) -> tuple[float, float] | None:
    """Least-squares ``(a, b)`` of ``peak = a + b·batch`` through ``points``; ``None`` if flat."""
    if len({p.batch for p in points}) < 2:
        return None
    n = len(points)
    mx = sum(p.batch for p in points) / n
    my = sum(p.peak_mb for p in points) / n
    sxx = sum((p.batch - mx) ** 2 for p in points)
    b = sum((p.batch - mx) * (p.peak_mb - my) for p in points) / sxx
    return (my - b * mx, b) if b > 0 else None


def search(
    measure: Callable[[int], tuple[float, float | None]],
    cap_mb: float,
    *,
    start: int = 64,
    tol: float = 0.05,
    limit: int = 1 << 24,
    trust_line: bool = False,
) -> tuple[int, list[Probe]]:
    """The largest batch ``B <= limit`` with ``measure(B)[0] <= cap_mb``, within ``tol``.

    ``measure(B)`` returns ``(peak_mb, step_s)``; a peak above the cap (or ``inf``, for a
    probe that failed) means ``B`` does not fit. The answer is the largest fitting batch
    measured once the smallest failing one is at most ``(1 + tol)`` times it (or ``limit``
    fits; or 0 if not even batch 1 fits). ``trust_line``: also stop once the line's
    prediction has been run and fits, if the line refitted through it predicts no more
    than ``(1 + tol)`` times it (one probe fewer; exact only for memory linear in ``B``).
    Returns the answer and every probe, in order.
    """
    probes: list[Probe] = []

    def run(batch: int) -> bool:
        peak, step_s = measure(batch)
        probes.append(Probe(batch, peak, peak <= cap_mb, step_s))
        return probes[-1].fits

    lo, hi = 0, None  # the largest fitting batch, the smallest failing one
    batch = min(start, limit)
    while hi is None:
        if run(batch):
            lo = batch
        else:
            hi = batch
            break
        if lo >= limit:
            return lo, probes
        fitting = [p for p in probes if p.fits]
        line = _line(fitting) if len(fitting) >= 3 else None
        if line is None:
            batch = 2 * lo
        else:
            a, b = line
            predicted = int((cap_mb - a) / b)
            if trust_line and len(fitting) > 3 and predicted <= lo * (1 + tol):
                return lo, probes
            batch = min(int(predicted / (1 + tol / 2)), GROWTH * lo)  # aim just below
            batch = max(batch, int(lo * (1 + tol)), lo + 1)
        batch = min(batch, limit)
    while hi - lo > 1 and hi > lo * (1 + tol):
        mid = (lo + hi) // 2 if lo else max(1, hi // 2)
        if run(mid):
            lo = mid
        else:
            hi = mid
    return lo, probes


def probe(model: str, peer: str, batch: int, cap_mb: float, timeout: float = 1800) -> Probe:
    """Measure one batch in a fresh process (see the module docstring)."""
    cmd = [sys.executable, "-m", "benchmarks.max_batch", "--probe", model, peer, str(batch)]
    cmd += ["--cap-mb", str(cap_mb)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        return Probe(batch, float(got["peak_mb"]), bool(got["fits"]), got.get("step_s"))
    except (subprocess.SubprocessError, ValueError, KeyError, IndexError):
        return Probe(batch, float("inf"), False)


def _watchdog(cap_mb: float, every_s: float = 0.005) -> None:
    """End the process (printing its probe as not fitting) once its RSS passes ``cap_mb``."""

    def watch() -> None:
        while True:
            rss = _status_mb("VmRSS")
            if rss > cap_mb:
                print(json.dumps({"peak_mb": rss, "fits": False, "step_s": None}), flush=True)
                os._exit(0)
            time.sleep(every_s)

    threading.Thread(target=watch, daemon=True).start()


def _child(model: str, peer: str, batch: int, cap_mb: float) -> None:
    from benchmarks.dp_step import _make

    _watchdog(cap_mb)
    step = _make(peer, batch, model)
    step()  # the first step allocates the optimizer state
    t0 = time.perf_counter()
    step()
    step_s = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_mb": peak, "fits": peak <= cap_mb, "step_s": step_s}), flush=True)


def run(
    quick: bool = False,
    cap_mb: float | None = None,
    models: tuple[str, ...] | None = None,
    peers: tuple[str, ...] = PEERS,
) -> list[Result]:
    """Search every (model, peer); ``quick``: a 1 GiB cap, 25 % tolerance, the line trusted."""
    from benchmarks.dp_step import MODELS

    cap = cap_mb if cap_mb is not None else (QUICK_CAP_MB if quick else CAP_MB)
    tol = 0.25 if quick else 0.05
    results = []
    for model in models or MODELS:
        workload = f"largest DP-SGD batch within {cap:.0f} MB peak RSS: {model}"
        for peer in peers:

            def measure(b: int, model: str = model, peer: str = peer) -> tuple[float, Any]:
                got = probe(model, peer, b, cap)
                print(f"[max_batch] {model}, {peer}, batch {b}: {got.peak_mb:.0f} MB", flush=True)
                return got.peak_mb, got.step_s  # inf if the probe failed

            best, probes = search(
                measure, cap, start=16 if quick else 64, tol=tol, trust_line=quick
            )
            at = next((p for p in reversed(probes) if p.batch == best), None)
            step_s = at.step_s if at is not None and at.step_s is not None else float("nan")
            trail = ", ".join(f"{p.batch}: {p.peak_mb:.0f}" for p in probes)
            results.append(
                result(
                    workload,
                    peer,
                    Timing([step_s]),
                    peak_mem_mb=at.peak_mb if at is not None else None,
                    note=f"max batch {best}",
                    extra={"max_batch": best, "cap_mb": cap, "probes_mb": trail},
                )
            )
    return results


def markdown(results: list[Result]) -> str:
    """One table per cap and model: each peer's largest batch, its peak, its step time."""

    def header(base: Result) -> list[str]:
        return [
            f"| peer | largest batch | batch / {base.peer}'s | peak RSS (MB) "
            "| step at that batch (s) | probes (batch: MB) |",
            "|---|---:|---:|---:|---:|---|",
        ]

    def row(r: Result, base: Result) -> str:
        best, ref = r.extra["max_batch"], base.extra["max_batch"]
        ratio = f"{best / ref:.2f}×" if ref else ""
        peak = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else ""
        return (
            f"| {r.peer} | {best} | {ratio} | {peak} | {r.median_s:.2f} | {r.extra['probes_mb']} |"
        )

    return workload_tables(results, "fdl dp step", header, row)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 GiB cap, 25 %% tolerance")
    ap.add_argument("--cap-mb", type=float, default=None, help="memory cap in MB (8192)")
    ap.add_argument("--model", action="append", help="only this model (cnn, text)")
    ap.add_argument("--peer", action="append", choices=PEERS, help="only this peer")
    ap.add_argument("--probe", nargs=3, metavar=("MODEL", "PEER", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        _child(args.probe[0], args.probe[1], int(args.probe[2]), args.cap_mb or CAP_MB)
    else:
        res = run(
            args.quick,
            args.cap_mb,
            tuple(args.model) if args.model else None,
            tuple(args.peer or PEERS),
        )
        print(markdown(res))
