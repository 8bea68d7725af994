"""fdl.allocator: freed CPU memory stays mapped, so steady-state steps fault no new pages.

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


def _run(setup: str = "", **env: str) -> tuple[float, bool]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS.format(setup=setup)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    ).stdout.split()
    return float(out[0]), out[1] == "True"


def test_import_keeps_freed_memory_and_no_page_is_faulted_again() -> None:
    faults, keeping = _run()
    assert keeping
    assert faults < 50  # 40 MB would be ~10,000 pages if freed memory went back


def test_environment_opt_out_leaves_glibc_defaults() -> None:
    faults, keeping = _run(FDL_KEEP_FREED_MEMORY="0")
    assert not keeping
    assert faults > 1000  # each fresh 40 MB is faulted in again


def test_turning_it_off_returns_to_glibc_behaviour() -> None:
    faults, keeping = _run("fdl.allocator.keep_freed_memory(False)")
    assert not keeping and faults > 1000
    faults, keeping = _run(
        "fdl.allocator.keep_freed_memory(False); fdl.allocator.keep_freed_memory(True)",
        FDL_KEEP_FREED_MEMORY="0",
    )
    assert keeping and faults < 50
