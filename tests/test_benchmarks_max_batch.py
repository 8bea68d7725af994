"""The largest-batch search of ``benchmarks/max_batch.py`` on fake memory curves (no probes run).

Each curve gives a process peak (MB) for a batch; the true answer is the largest batch
whose peak is at most the cap, found by brute force. The search must return a batch that
fits, within its tolerance of the true answer, in few probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from benchmarks import __main__ as harness
from benchmarks import max_batch
from benchmarks._harness import Result

CAP = 8192.0

# name -> peak_mb(batch)
CURVES: dict[str, Callable[[int], float]] = {
    "linear": lambda b: 700.0 + 0.37 * b,
    "linear steep": lambda b: 650.0 + 5.3 * b,
    "quadratic": lambda b: 700.0 + 0.5 * b + 2e-4 * b * b,
    "steps": lambda b: 700.0 + 256.0 * math.ceil(b / 1000),  # an allocator's size classes
    "crash above 5000": lambda b: 700.0 + 0.1 * b if b <= 5000 else math.inf,
}


def _truth(peak: Callable[[int], float], cap: float) -> int:
    lo, hi = 0, 1
    while peak(hi) <= cap:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # peak is non-decreasing in every curve
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak(mid) <= cap else (lo, mid)
    return lo


def _fake(peak: Callable[[int], float]) -> tuple[Callable[[int], tuple[float, None]], list[int]]:
    calls: list[int] = []

    def measure(batch: int) -> tuple[float, None]:
        assert batch >= 1
        calls.append(batch)
        return peak(batch), None

    return measure, calls


@pytest.mark.parametrize("name", list(CURVES))
@pytest.mark.parametrize("tol", [0.05, 0.25])
def test_search_finds_the_largest_fitting_batch_within_tol(name: str, tol: float) -> None:
    peak = CURVES[name]
    measure, calls = _fake(peak)
    best, probes = max_batch.search(measure, CAP, start=64, tol=tol)
    truth = _truth(peak, CAP)
    assert peak(best) <= CAP
    assert truth / (1 + tol) <= best <= truth, (best, truth)
    assert [p.batch for p in probes] == calls
    assert all(p.fits == (peak(p.batch) <= CAP) for p in probes)
    assert len(calls) <= 25


def test_linear_memory_takes_five_probes() -> None:
    measure, calls = _fake(CURVES["linear"])
    best, _ = max_batch.search(measure, CAP, start=64, tol=0.05)
    assert len(calls) == 5, calls  # 64, 128, 256, the prediction, 5 % above it
    assert _truth(CURVES["linear"], CAP) / 1.05 <= best <= _truth(CURVES["linear"], CAP)


@pytest.mark.parametrize("name", ["linear", "linear steep"])
def test_trusting_the_line_saves_the_probe_above(name: str) -> None:
    measure, calls = _fake(CURVES[name])
    best, _ = max_batch.search(measure, CAP, start=64, tol=0.05, trust_line=True)
    truth = _truth(CURVES[name], CAP)
    assert truth / 1.05 <= best <= truth
    assert len(calls) == 4, calls  # 64, 128, 256, the prediction


def test_growth_is_bounded_over_the_largest_fit() -> None:
    measure, calls = _fake(lambda b: 700.0 + 1e-6 * b)  # almost flat: the line predicts far
    max_batch.search(measure, CAP, start=64, tol=0.05, limit=1 << 30)
    fitted = sorted(calls)
    assert all(b <= max_batch.GROWTH * a for a, b in zip(fitted, fitted[1:], strict=False))


def test_start_too_large_shrinks_and_nothing_fitting_gives_zero() -> None:
    measure, _ = _fake(CURVES["linear steep"])
    best, _ = max_batch.search(measure, CAP, start=100_000, tol=0.05)
    truth = _truth(CURVES["linear steep"], CAP)
    assert truth / 1.05 <= best <= truth
    measure, calls = _fake(lambda b: 9000.0)
    assert max_batch.search(measure, CAP, start=64)[0] == 0
    assert calls[-1] == 1


def test_limit_stops_the_growth() -> None:
    measure, calls = _fake(lambda b: 700.0 + 1e-3 * b)
    best, _ = max_batch.search(measure, CAP, start=64, limit=1000)
    assert best == 1000 and max(calls) == 1000


def _result(peer: str, best: int) -> Result:
    extra = {"max_batch": best, "cap_mb": CAP, "probes_mb": f"{best}: 8000"}
    return Result("largest batch: cnn", peer, 1.0, 1.0, 1.0, 1, peak_mem_mb=8000.0, extra=extra)


def test_markdown_module_renders_apart_from_the_ratio_tables(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "versions", lambda: {"torch": "x"})  # no slow imports
    results = [_result("fdl dp step", 4000), _result("opacus hooks", 1000)]
    text = max_batch.markdown(results)
    assert "| opacus hooks | 1000 | 0.25× | 8000 |" in text
    entry = {
        "name": "max_batch",
        "title": "largest batch",
        "results": results,
        "flops": {},
        "error": None,
        "seconds": 1.0,
        "markdown": text,
    }
    report = harness.render([entry], quick=True, argv=[], plot=None)
    assert "## largest batch" in report and "#### largest batch: cnn" in report
    assert "time / " not in report  # not in a ratio table
    assert not harness.plot_ratios([entry], tmp_path / "p.png")
