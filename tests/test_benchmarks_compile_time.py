"""The cold-compile benchmark's plumbing: its breakdown, its child's environment, and one child
run end to end (with the eager backend: no timing, no inductor compile)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from benchmarks import compile_time as C


def test_phases_are_exclusive_of_the_phases_inside_them() -> None:
    metrics = {
        "bytecode_tracing": 2.0,
        "create_aot_dispatcher_function": 10.0,
        "compile_fx_inner": 7.0,
        "GraphLowering.run": 1.0,
        "GraphLowering.codegen": 3.0,
        "GraphLowering.compile_to_module": 5.5,
        "_compile.compile_inner": 12.5,
    }
    got = C.phase_seconds(metrics)
    assert got["dynamo trace"] == 2.0
    assert got["AOT autograd"] == 3.0  # 10 less inductor's 7
    assert got["inductor scheduling + codegen"] == 3.0
    assert got["C++ compile + load (waited for)"] == 2.5  # 5.5 less codegen's 3
    assert got["total compile"] == 12.5
    assert math.isnan(C.phase_seconds({})["dynamo trace"])
    not_nested = {"create_aot_dispatcher_function": 2.0, "compile_fx_inner": 7.0}
    assert math.isnan(C.phase_seconds(not_nested)["AOT autograd"])


def test_cold_env_gives_the_child_its_own_empty_cache() -> None:
    base = {"TORCHINDUCTOR_CACHE_DIR": "/warm", "PATH": "/bin"}
    env = C.cold_env("/tmp/cold", {"TORCHINDUCTOR_COMPILE_THREADS": "1"}, base)
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/tmp/cold"
    assert env["TORCHINDUCTOR_FX_GRAPH_REMOTE_CACHE"] == "0"
    assert env["TORCHINDUCTOR_COMPILE_THREADS"] == "1" and env["PATH"] == "/bin"
    assert base["TORCHINDUCTOR_CACHE_DIR"] == "/warm"


def test_setattr_path_reaches_nested_config() -> None:
    obj = SimpleNamespace(cpp=SimpleNamespace(vec_isa_ok=None), compile_threads=2)
    C.setattr_path(obj, "cpp.vec_isa_ok", True)
    C.setattr_path(obj, "compile_threads", 1)
    assert obj.cpp.vec_isa_ok is True and obj.compile_threads == 1


@pytest.mark.parametrize("name", list(C.VARIANTS))
def test_every_variant_names_real_inductor_settings(name: str) -> None:
    import torch._inductor.config as config

    for dotted in C.VARIANTS[name][1]:
        obj = config
        for part in dotted.split("."):
            obj = getattr(obj, part)  # raises AttributeError for a misspelt setting


def test_parse_settings_reads_json_values() -> None:
    got = C.parse_settings(["cpp.vec_isa_ok=true", "max_fusion_size=256", "x=O1"])
    assert got == {"cpp.vec_isa_ok": True, "max_fusion_size": 256, "x": "O1"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        C.parse_settings(["max_fusion_size"])


@pytest.mark.parametrize("peer", ["fdl", "torch"])
def test_child_runs_end_to_end_in_a_fresh_process(peer: str) -> None:
    options = {"compile": {"backend": "eager"}, "steady_steps": 1, "threads": 1, "peer": peer}
    record = C.measure_cold(options, fresh_pch=peer == "torch")
    assert record["graphs"] == 1 and record["graph_breaks"] == 0
    assert record["first_step_s"] > 0 and record["cpu_s"] > 0 and record["threads"] == 1
    assert math.isfinite(record["loss"])
    assert record["shared_objects"] == 0 and record["cpp_lines"] == 0  # eager: no C++
    assert record["dynamo_ops"] > 0 and record["kernels"] == 0
    assert set(record["phases"]) == {p for p, _, _ in C.PHASES}
    assert "graph break" in C.describe(record) and "ops traced" in C.describe(record)


def test_lever_labels_its_row_with_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake(options, env=None, fresh_pch=False):
        seen.append((options, fresh_pch))
        phases = {p: 1.0 for p, _, _ in C.PHASES}
        return {
            "first_step_s": 20.0, "steady_ms": 5.0, "phases": phases, "cpu_s": 30.0,
            "self_cpu_s": 20.0, "shared_objects": 11, "graphs": 1, "graph_breaks": 0,
            "import_s": 2.0, "threads": 1,
        }  # fmt: skip

    monkeypatch.setattr(C, "measure_cold", fake)
    row = C.lever({"max_fusion_size": 256}, optimizer="sgd", repeats=2, fresh_pch=True)
    assert row.peer == "fdl, max_fusion_size=256, optimizer=sgd, fresh PCH"
    assert row.repeats == 2 and row.note.startswith("CPU s per run 30, 30")
    assert seen[0][0]["inductor"] == {"max_fusion_size": 256} and seen[0][1] is True
    assert C.lever({}, peer="torch").peer == "torch.compile + fused Adam"


def test_run_reports_each_variant_with_its_breakdown(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake(options, env=None, fresh_pch=False):
        calls.append(options)
        first = 12.0 + len(calls)
        phases = {p: 1.0 for p, _, _ in C.PHASES}
        return {
            "first_step_s": first, "steady_ms": 5.0, "phases": phases, "cpu_s": 30.0,
            "self_cpu_s": 20.0, "shared_objects": 11, "graphs": 1, "graph_breaks": 0,
            "import_s": 2.0, "threads": 1,
        }  # fmt: skip

    monkeypatch.setattr(C, "measure_cold", fake)
    quick = C.run(quick=True)
    assert [r.peer for r in quick] == ["fdl"] and quick[0].median_s == 13.0
    assert quick[0].note.startswith("target ≤ 10 s") and "11 compiled libraries" in quick[0].note
    calls.clear()
    full = C.run(quick=False)
    assert [r.peer for r in full] == list(C.VARIANTS)
    assert full[0].repeats == 3 and all(r.repeats == 1 for r in full[1:])
    assert full[0].median_s == 14.0  # the middle of 13, 14, 15
    inductor = [c["inductor"] for c in calls[3:]]
    assert inductor == [C.VARIANTS[n][1] for n in list(C.VARIANTS)[1:]]
