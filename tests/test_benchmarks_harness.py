"""The benchmark harness runs end to end on a tiny workload (it works; no timings checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fdl
from benchmarks import __main__ as harness
from benchmarks._harness import Result


@pytest.fixture
def only_tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "discover", lambda: ["_tiny"])


def test_quick_run_writes_report_and_plot(tmp_path: Path, only_tiny: None) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nHand-written notes kept.\n")
    code = harness.main(["--quick", "--out", str(out), "--json", str(tmp_path / "r.json")])
    assert code == 0
    text = out.read_text()
    assert "Hand-written notes kept." in text
    assert harness.BEGIN in text and harness.END in text
    assert "| fdl |" in text and "| torch.mm |" in text
    assert "GFLOP per step" in text and "floor" in text
    assert "≤ 100× torch.mm" in text and ("| met |" in text or "| **missed** |" in text)
    assert "Machine" in text and "torch" in text
    assert "**Allocator** (the same for every peer" in text
    if fdl.allocator.settings() is not None:  # glibc
        assert "freed CPU memory kept (fdl.allocator.keep_freed_memory()" in text
    assert not fdl.allocator.is_keeping_freed_memory()  # restored when the run ends
    assert (tmp_path / "benchmarks.png").stat().st_size > 1000
    assert (tmp_path / "r.json").exists()


def test_rerun_replaces_generated_section(tmp_path: Path, only_tiny: None) -> None:
    out = tmp_path / "b.md"
    harness.main(["--quick", "--out", str(out)])
    harness.main(["--quick", "--out", str(out)])
    assert out.read_text().count(harness.BEGIN) == 1


def test_glibc_allocator_is_named_in_the_report(tmp_path: Path, only_tiny: None) -> None:
    out = tmp_path / "b.md"
    assert harness.main(["--quick", "--allocator", "glibc", "--out", str(out)]) == 0
    if fdl.allocator.settings() is not None:
        assert "glibc's default policy" in out.read_text()


def test_failing_module_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "discover", lambda: ["_does_not_exist"])
    out = tmp_path / "b.md"
    assert harness.main(["--quick", "--out", str(out)]) == 1
    assert "_does_not_exist.py` failed" in out.read_text()


def test_unknown_only_is_an_error(tmp_path: Path, only_tiny: None) -> None:
    with pytest.raises(SystemExit):
        harness.main(["--only", "nope", "--out", str(tmp_path / "b.md")])


def _res(workload: str, peer: str, t: float, **extra: object) -> Result:
    return Result(workload, peer, t, t, t, 1, extra=dict(extra))


def test_targets_are_judged_met_or_missed() -> None:
    target = {"text": "≥ 2× faster", "vs": "torch", "max_ratio": 0.5}
    met = harness._targets_rows([_res("w", "fdl", 1.0, targets=[target]), _res("w", "torch", 3.0)])
    missed = harness._targets_rows(
        [_res("w", "fdl", 1.0, targets=[target]), _res("w", "torch", 1.5)]
    )
    absent = harness._targets_rows([_res("w", "fdl", 1.0, targets=[target])])
    assert met[0].endswith("| met |")
    assert missed[0].endswith("| **missed** |")
    assert "peer not measured" in absent[0]


def test_merge_keeps_the_modules_not_run_now_and_marks_them(tmp_path: Path) -> None:
    old = Result("w_old", "fdl", 2.0, 1.0, 3.0, 5)
    stale = Result("w_new", "fdl", 9.0, 9.0, 9.0, 5)
    previous = tmp_path / "old.json"
    previous.write_text(
        json.dumps(
            [
                {"name": n, "results": [r.to_dict()], "flops": {}, "error": None, "seconds": t}
                for n, r, t in (("a", old, 3), ("b", stale, 4))
            ]
        )
    )
    report = tmp_path / "report.md"
    report.write_text("# B\n\nGenerated 2026-01-02 03:04 by `python -m benchmarks`.\n")
    now = Result("w_new", "fdl", 1.0, 1.0, 1.0, 5)
    fresh = {"name": "b", "results": [now], "flops": {}, "error": None, "seconds": 1}
    out = harness.merged_entries([fresh], previous, report)
    assert [e["name"] for e in out] == ["a", "b"]
    assert out[1] is fresh  # the module run now wins over its earlier result
    assert out[0]["carried"] and out[0]["generated"] == "2026-01-02 03:04"
    assert out[0]["results"] == [old]
    text = harness.render(out, quick=True, argv=[], plot=None)
    assert "`a` (3 s, from the run of 2026-01-02 03:04)" in text
    assert "`b` (1 s)" in text
    assert harness.merged_entries([fresh], tmp_path / "missing.json", report) == [fresh]
