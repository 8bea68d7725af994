"""``import fdl`` changes nothing outside fdl: not the C allocator, not torch's global state.

Each check compares two fresh interpreters: one that imports fdl (alone, or with
every public subpackage) and a reference that imports only what the first one
loaded from outside fdl (torch, torchvision, ...). Both then report the same
probes; any difference is a side effect of fdl's own code.

The allocator probe is behavioural, since glibc has no getter for its
``mallopt`` parameters: with glibc's defaults the mmap threshold is adaptive,
so a large block freed after ``mmap`` raises it and the next block of that size
comes from the heap; the first ``mallopt`` call of any kind (even one that
writes a default value back) fixes the threshold, and every such block is
``mmap``-ed again. ``mallinfo2().hblks`` (blocks now served by ``mmap``) tells
the two apart. A control run that makes one value-neutral ``mallopt`` call
proves that the probe sees it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest

import fdl

SUBPACKAGES = [
    "fdl.checkpoint",
    "fdl.data",
    "fdl.ensemble",
    "fdl.losses",
    "fdl.metrics",
    "fdl.nn",
    "fdl.optim",
    "fdl.per_sample",
    "fdl.privacy",
    "fdl.testing",
    "fdl.train",
]

# argv: JSON lists of modules to import before and after a first snapshot of torch's
# state, then Python code run before the second snapshot and the allocator probe.
_PROBE = r"""
import ctypes, hashlib, importlib, json, logging, os, random, signal, sys, warnings

def import_all(names):
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            pass

def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]

def torch_state():
    import torch

    denormal = torch.tensor([1e-39], dtype=torch.float32)
    state = {
        "default_dtype": str(torch.get_default_dtype()),
        "default_device": str(torch.get_default_device()),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
        "autocast_cpu": torch.is_autocast_enabled("cpu"),
        "initial_seed": torch.initial_seed(),
        "rng_state": digest(torch.get_rng_state().numpy().tobytes()),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "flush_denormal": float((denormal * 1.0).item()) == 0.0,
        "mkldnn": torch.backends.mkldnn.enabled,
        "cudnn": [
            torch.backends.cudnn.enabled,
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.allow_tf32,
        ],
        "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "python_random": digest(repr(random.getstate()).encode()),
        "recursion_limit": sys.getrecursionlimit(),
        "warning_filters": [repr(f) for f in warnings.filters],
        "root_logger": [logging.getLogger().level, len(logging.getLogger().handlers)],
        "sigint": repr(signal.getsignal(signal.SIGINT)),
        "environ": digest(json.dumps(sorted(os.environ.items())).encode()),
    }
    if "numpy" in sys.modules:
        state["numpy_random"] = digest(sys.modules["numpy"].random.get_state()[1].tobytes())
    return state

def allocator_probe():
    libc = ctypes.CDLL("libc.so.6")
    class Mallinfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    def mmapped(n):
        before = libc.mallinfo2().hblks
        p = libc.malloc(n)
        after = libc.mallinfo2().hblks
        libc.free(p)
        return after > before
    # each size twice: with an adaptive threshold the first free raises it
    return [[mmapped(s << 20), mmapped(s << 20)] for s in (1, 4, 16, 24, 64)]

import_all(json.loads(sys.argv[1]))
first = torch_state()
before = set(sys.modules)
import_all(json.loads(sys.argv[2]))
loaded = sorted(m for m in set(sys.modules) - before if m.split(".")[0] != "fdl")
names = ("ctypes", "fdl", "random", "torch")
exec(sys.argv[3], {n: sys.modules[n] for n in names if n in sys.modules})
second = torch_state()
print(json.dumps({"loaded": loaded, "before": first, "after": second, "malloc": allocator_probe()}))
"""


# the declared dependencies (pyproject.toml), imported before fdl in every probe
DEPENDENCIES = ["torch", "torchvision", "optree", "numpy", "safetensors", "tqdm"]


@functools.cache
def _probe(first: tuple[str, ...], then: tuple[str, ...] = (), code: str = "") -> dict:
    """Import ``first``, snapshot torch's state, import ``then``, run ``code``, snapshot, probe."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(first), json.dumps(then), code],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=[("fdl",), ("fdl", *SUBPACKAGES)], ids=["fdl", "all"])
def imported(request: pytest.FixtureRequest) -> tuple[dict, dict]:
    """(a process that imports fdl after its dependencies, one that imports only those).

    The second also imports every outside module the first one's fdl import loaded.
    """
    got = _probe(tuple(DEPENDENCIES), request.param)
    return got, _probe(tuple(DEPENDENCIES + got["loaded"]))


def test_import_changes_no_torch_state(imported: tuple[dict, dict]) -> None:
    got, _ = imported
    assert got["after"] == got["before"]


@pytest.mark.skipif(fdl.allocator._LIBC is None, reason="the probe reads glibc's mallinfo2")
def test_import_leaves_the_allocator_alone(imported: tuple[dict, dict]) -> None:
    got, want = imported
    assert got["malloc"] == want["malloc"]


def test_the_probes_see_each_change() -> None:
    changes = {
        "rng_state": "torch.manual_seed(0)",
        "num_threads": "torch.set_num_threads(torch.get_num_threads() + 1)",
        "flush_denormal": "torch.set_flush_denormal(True)",
        "float32_matmul_precision": "torch.set_float32_matmul_precision('medium')",
        "deterministic": "torch.use_deterministic_algorithms(True)",
        "python_random": "random.seed(0)",
    }
    code = "; ".join(changes.values())
    if fdl.allocator._LIBC is not None:
        # M_MMAP_MAX = 65536 is glibc's default: only the adaptive threshold changes
        code += "; ctypes.CDLL('libc.so.6').mallopt(-4, 65536)"
    got = _probe(tuple(DEPENDENCIES), (), code)
    assert {k for k in got["after"] if got["after"][k] != got["before"][k]} >= set(changes)
    if fdl.allocator._LIBC is not None:
        assert got["malloc"] != _probe(tuple(DEPENDENCIES))["malloc"]


@pytest.mark.skipif(fdl.allocator._LIBC is None, reason="glibc only")
def test_keep_then_restore_gives_glibc_defaults_back() -> None:
    # glibc's default values written back with mallopt: the best state any restore can reach
    first = (*DEPENDENCIES, "fdl")
    defaults = (
        "ctypes.CDLL('libc.so.6').mallopt(-4, 65536); ctypes.CDLL('libc.so.6').mallopt(-1, 1 << 17)"
    )
    want = _probe(first, (), defaults)["malloc"]
    kept = _probe(first, (), "fdl.allocator.keep_freed_memory()")["malloc"]
    restored = _probe(first, (), "fdl.allocator.keep_freed_memory().restore()")["malloc"]
    assert all(not a and not b for a, b in kept)  # no block is mmap-ed
    assert restored == want
    assert any(a for a, _ in want)  # large blocks are mmap-ed again
