"""fdl.allocator: opted in, freed CPU memory stays mapped and steady-state steps fault no new pages.

Each check runs in a fresh interpreter: the setting is process-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fdl

pytestmark = pytest.mark.skipif(
    fdl.allocator._LIBC is None, reason="glibc only (the setting is a no-op elsewhere)"
)

# Allocate and free 40 MB results in a loop; print minor page faults per iteration
# after a warm-up.
_FAULTS = """
import resource, sys, torch, fdl
{setup}
def once():
    x = torch.empty(10_000_000)
    x.fill_(1.0)
    y = x * 2.0
    del x
    return y
for _ in range(30):
    once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    once()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
print(fdl.allocator.is_keeping_freed_memory())
"""


def _run(setup: str = "") -> tuple[float, bool]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS.format(setup=setup)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    ).stdout.split()
    return float(out[0]), out[1] == "True"


def test_import_leaves_glibc_defaults() -> None:
    faults, keeping = _run()
    assert not keeping
    assert faults > 1000  # each fresh 40 MB is faulted in again


def test_opt_in_keeps_freed_memory_and_no_page_is_faulted_again() -> None:
    faults, keeping = _run("kept = fdl.allocator.keep_freed_memory()")
    assert keeping
    assert faults < 50  # 40 MB would be ~10,000 pages if freed memory went back


def test_restore_returns_to_glibc_behaviour() -> None:
    faults, keeping = _run("fdl.allocator.keep_freed_memory().restore()")
    assert not keeping and faults > 1000
    faults, keeping = _run("with fdl.allocator.keep_freed_memory(): pass")
    assert not keeping and faults > 1000


def test_handles_nest_and_restore_innermost_first() -> None:
    a = fdl.allocator
    before = a.settings()
    outer = a.keep_freed_memory()
    try:
        inner = a.keep_freed_memory()
        assert inner.previous == a.settings() and inner.previous.mmap_max == 0
        with pytest.raises(RuntimeError, match="innermost first"):
            outer.restore()
        inner.restore()
        inner.restore()  # a second restore does nothing
        assert a.is_keeping_freed_memory() and a.settings().mmap_max == 0
    finally:
        outer.restore()
    assert not a.is_keeping_freed_memory()
    assert (a.settings().mmap_max, a.settings().trim_threshold) == (
        before.mmap_max,
        before.trim_threshold,
    )


@pytest.mark.parametrize(
    "environ, want",
    [
        ({}, (65536, 128 * 1024, "glibc defaults")),
        ({"MALLOC_MMAP_MAX_": "7"}, (7, 128 * 1024, "environment")),
        (
            {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=4096:glibc.malloc.mmap_max=3"},
            (3, 4096, "environment"),
        ),
    ],
)
def test_settings_before_fdl_come_from_glibc_defaults_and_the_environment(
    environ: dict[str, str], want: tuple[int, int, str]
) -> None:
    got = fdl.allocator._initial_settings(environ)
    assert (got.mmap_max, got.trim_threshold, got.source) == want
