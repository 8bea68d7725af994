"""The allocator comparison's plumbing: finding libraries, the child's environment and command,
reading its results, and the table (fake children; no timings)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks import __main__ as harness
from benchmarks import _allocators as A
from benchmarks._harness import Result


def _res(workload: str, peer: str, t: float) -> Result:
    return Result(workload, peer, t, t, t, 1)


def _lib(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(b"\x7fELF")
    return path


# --------------------------------------------------------------------------- configurations


def test_all_names_every_configuration_in_order() -> None:
    assert [c.name for c in A.parse_names("all")] == [c.name for c in A.CONFIGS]
    assert [c.name for c in A.parse_names("jemalloc, glibc")] == ["jemalloc", "glibc"]
    assert {"glibc", "keep", "jemalloc", "tcmalloc"} <= set(A.BY_NAME)


@pytest.mark.parametrize("spec", ["nope", "glibc,nope", ""])
def test_unknown_names_are_an_error(spec: str) -> None:
    with pytest.raises(ValueError, match="unknown allocator"):
        A.parse_names(spec)


@pytest.mark.parametrize("config", A.CONFIGS, ids=lambda c: c.name)
def test_preloading_configurations_find_their_library(tmp_path: Path, config) -> None:
    if not config.libraries:
        assert A.find_library(config, dirs=[tmp_path], environ={}) == (None, "")
        return
    missing, reason = A.find_library(config, dirs=[tmp_path], environ={})
    assert missing is None and config.libraries[0] in reason and config.override_var in reason
    fallback = _lib(tmp_path, config.libraries[-1])
    assert A.find_library(config, dirs=[tmp_path], environ={}) == (fallback, "")
    preferred = _lib(tmp_path, config.libraries[0])  # the first name wins over later ones
    assert A.find_library(config, dirs=[tmp_path], environ={}) == (preferred, "")


def test_override_variable_names_the_library(tmp_path: Path) -> None:
    je = A.BY_NAME["jemalloc"]
    lib = _lib(tmp_path, "custom-jemalloc.so")
    assert A.find_library(je, dirs=[], environ={je.override_var: str(lib)}) == (lib, "")
    path, reason = A.find_library(je, dirs=[], environ={je.override_var: str(tmp_path / "x.so")})
    assert path is None and "is not a file" in reason


def test_search_dirs_include_wheel_and_system_folders() -> None:
    dirs = A.search_dirs()
    assert any(d.parts[-2:] == ("cmeel.prefix", "lib") for d in dirs)  # the mimalloc wheel
    assert Path("/usr/lib/x86_64-linux-gnu") in dirs
    assert len(dirs) == len(set(dirs))


# --------------------------------------------------------------------------- child process


def test_child_env_preloads_the_library_first_and_sets_its_variables(tmp_path: Path) -> None:
    je = A.BY_NAME["jemalloc"]
    lib = tmp_path / "libjemalloc.so.2"
    base = {"PATH": "/bin", "LD_PRELOAD": "/opt/libiomp5.so /usr/lib/libtcmalloc.so.4"}
    env = A.child_env(je, lib, base)
    assert env["LD_PRELOAD"] == f"{lib}:/opt/libiomp5.so"  # the inherited allocator is dropped
    assert env["MALLOC_CONF"] == A.JEMALLOC_CONF
    assert env["PATH"] == "/bin"
    assert base["LD_PRELOAD"].startswith("/opt")  # the base is not modified


def test_child_env_of_glibc_preloads_no_allocator() -> None:
    base = {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2", "MALLOC_CONF": "narenas:1"}
    assert A.child_env(A.BY_NAME["glibc"], None, base) == {}
    kept = A.child_env(A.BY_NAME["keep"], None, {"LD_PRELOAD": "/x/libiomp5.so"})
    assert kept == {"LD_PRELOAD": "/x/libiomp5.so"}


def test_child_command_runs_the_modules_under_the_in_process_setting(tmp_path: Path) -> None:
    cmd = A.child_command(
        A.BY_NAME["keep"], ["a", "b"], tmp_path / "k.json", tmp_path, quick=True, threads=1
    )
    assert cmd[1:5] == ["-m", "benchmarks", "--allocator", "keep"]
    assert cmd[cmd.index("--json") + 1] == str(tmp_path / "k.json")
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "keep.md")  # not the real report
    assert "--quick" in cmd and cmd[cmd.index("--threads") + 1] == "1"
    assert [cmd[i + 1] for i, c in enumerate(cmd) if c == "--only"] == ["a", "b"]
    glibc = A.child_command(
        A.BY_NAME["jemalloc"], [], tmp_path / "j.json", tmp_path, quick=False, threads=None
    )
    assert glibc[glibc.index("--allocator") + 1] == "glibc"
    assert "--quick" not in glibc and "--threads" not in glibc


def _fake_spawn(entries: list[dict], note: str, returncode: int = 0):
    """A stand-in for subprocess.run that writes the child's JSON and records its call."""
    calls = []

    def spawn(cmd, env, **kwargs):
        calls.append((cmd, env))
        if entries is not None:
            data = [{**e, "allocator": note} for e in entries]
            Path(cmd[cmd.index("--json") + 1]).write_text(json.dumps(data))
        return subprocess.CompletedProcess(cmd, returncode, "", "boom\nlast line")

    spawn.calls = calls
    return spawn


def _entry(name: str, results: list[Result], error: str | None = None) -> dict:
    return {"name": name, "results": [r.to_dict() for r in results], "error": error}


def test_run_config_reads_the_childs_results(tmp_path: Path, monkeypatch) -> None:
    lib = _lib(tmp_path, "libjemalloc.so.2")
    monkeypatch.setenv("FDL_BENCH_JEMALLOC", str(lib))
    spawn = _fake_spawn([_entry("m", [_res("w", "fdl", 0.002)])], f"x via LD_PRELOAD ({lib})")
    run = harness.run_config(
        A.BY_NAME["jemalloc"], ["m"], tmp_path, quick=True, threads=1, spawn=spawn
    )
    assert run.status == "ran" and run.reason == "" and run.library == lib
    assert [(r.workload, r.peer, r.median_s) for r in run.results] == [("w", "fdl", 0.002)]
    ((cmd, env),) = spawn.calls
    assert env["LD_PRELOAD"].split(":")[0] == str(lib)
    assert env["MALLOC_CONF"] == A.JEMALLOC_CONF


def test_run_config_fails_when_the_library_was_not_loaded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FDL_BENCH_TCMALLOC", str(_lib(tmp_path, "libtcmalloc.so.4")))
    spawn = _fake_spawn([_entry("m", [_res("w", "fdl", 1.0)])], "glibc's default policy")
    run = harness.run_config(
        A.BY_NAME["tcmalloc"], ["m"], tmp_path, quick=True, threads=1, spawn=spawn
    )
    assert "did not load" in run.reason


def test_run_config_skips_a_missing_library_without_spawning(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FDL_BENCH_MIMALLOC", str(tmp_path / "absent.so"))
    spawn = _fake_spawn([], "")
    run = harness.run_config(
        A.BY_NAME["mimalloc"], ["m"], tmp_path, quick=True, threads=1, spawn=spawn
    )
    assert run.status == "skipped" and "is not a file" in run.reason
    assert spawn.calls == []


def test_run_config_reports_a_crashed_child(tmp_path: Path) -> None:
    spawn = _fake_spawn(None, "", returncode=3)
    run = harness.run_config(
        A.BY_NAME["glibc"], ["m"], tmp_path, quick=True, threads=1, spawn=spawn
    )
    assert run.status == "failed" and "exit code 3" in run.reason and "last line" in run.reason


def test_module_errors_of_a_child_are_kept_beside_its_results(tmp_path: Path) -> None:
    spawn = _fake_spawn(
        [_entry("a", [_res("w", "fdl", 1.0)]), _entry("b", [], "Traceback\nValueError: bad")],
        "glibc's default policy",
    )
    run = harness.run_config(
        A.BY_NAME["keep"], ["a", "b"], tmp_path, quick=True, threads=1, spawn=spawn
    )
    assert run.status == "ran" and run.reason == "b: ValueError: bad"


# --------------------------------------------------------------------------- table


def _runs() -> list[A.ConfigRun]:
    return [
        A.ConfigRun(
            A.BY_NAME["glibc"], "ran", results=[_res("w", "fdl", 0.004), _res("w", "torch", 0.010)]
        ),
        A.ConfigRun(
            A.BY_NAME["keep"], "ran", results=[_res("w", "fdl", 0.002), _res("w", "torch", 0.011)]
        ),
        A.ConfigRun(A.BY_NAME["jemalloc"], "ran", results=[_res("w", "fdl", 0.003)]),
        A.ConfigRun(A.BY_NAME["tcmalloc"], "skipped", "libtcmalloc.so.4 not found"),
    ]


def test_table_has_each_peer_under_each_allocator_and_its_best() -> None:
    text = A.format_comparison(_runs())
    lines = text.splitlines()
    assert "| peer | glibc (ms) | keep (ms) | jemalloc (ms) | best |" in lines
    assert "| fdl | 4.000 | 2.000 | 3.000 | keep (0.50× the time under glibc) |" in lines
    assert "| torch | 10.000 | 11.000 | — | glibc |" in lines  # absent under jemalloc
    assert "tcmalloc (ms)" not in text  # skipped: no column ...
    assert any(
        line.startswith("| tcmalloc |") and "skipped: libtcmalloc.so.4 not found" in line
        for line in lines
    )  # ... but a row saying why


def test_table_of_only_skipped_configurations_lists_them() -> None:
    text = A.format_comparison([A.ConfigRun(A.BY_NAME["jemalloc"], "skipped", "not found")])
    assert "| jemalloc |" in text and "## " not in text


def test_compare_allocators_writes_its_own_section(tmp_path: Path, monkeypatch) -> None:
    runs = iter(_runs())
    monkeypatch.setattr(harness, "run_config", lambda *a, **k: next(runs))
    out = tmp_path / "b.md"
    out.write_text(f"# B\n\n{harness.BEGIN}\nmain tables\n{harness.END}\n")
    argv = ["--allocators", "glibc,keep,jemalloc,tcmalloc", "--out", str(out), "_tiny"]
    argv += ["--json", str(tmp_path / "a.json")]
    assert harness.main(argv) == 0
    text = out.read_text()
    assert "main tables" in text  # the per-peer section is kept
    assert text.count(harness.ALLOC_BEGIN) == 1 and harness.ALLOC_END in text
    assert "| fdl | 4.000 | 2.000 | 3.000 |" in text
    saved = json.loads((tmp_path / "a.json").read_text())
    assert [s["allocator"] for s in saved] == ["glibc", "keep", "jemalloc", "tcmalloc"]


def test_allocator_note_names_a_preloaded_allocator(monkeypatch) -> None:
    from benchmarks import _harness

    monkeypatch.setattr(A, "loaded_allocator", lambda: "/usr/lib/libjemalloc.so.2")
    monkeypatch.setenv("MALLOC_CONF", "background_thread:true")
    note = _harness.allocator_note()
    assert note.startswith("libjemalloc.so.2 via LD_PRELOAD") and "background_thread" in note
    assert A.check_allocator(A.ConfigRun(A.BY_NAME["glibc"], "ran", allocator=note))
