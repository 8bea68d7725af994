"""Cold first compile of the MNIST CNN train step: seconds to the first finished step.

The step is the one a user starts with: ``examples/mnist_cnn.py``'s CNN,
``fdl.losses.nll_loss``, ``fdl.optim.adam`` and ``fdl.train.make_train_step``
(``torch.compile(fullgraph=True)``, inductor), one batch of 64 random images.
Every measurement runs in a fresh interpreter with an empty temporary
``TORCHINDUCTOR_CACHE_DIR``, so no FX graph, AOT autograd or compiled-kernel
cache can hit: what a first run on a new machine pays.

Reported per peer: the first step's seconds (trace and compile included,
imports not), the breakdown from ``torch._dynamo.utils.compile_times()``'s
metrics (dynamo trace, AOT autograd, inductor lowering, scheduling and
codegen, C++ compile and load; each exclusive of the phases inside it), the
CPU seconds of the child and of everything it waited for (the C++ compiler,
inductor's compile workers: steadier than wall time on a shared machine), the
number of compiled libraries, graph count and graph breaks, and the steady
step's milliseconds.

Peers: ``fdl`` (as shipped, three cold processes) and variants with one
inductor setting changed (:data:`VARIANTS`, one process each); ``--quick``
measures ``fdl`` once.

Run: ``python -m benchmarks.compile_time`` (``--quick``: one repeat, fdl alone).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import Result, Timing, format_table, result

WORKLOAD = "cold first compile, MNIST CNN train step (batch 64)"

# The breakdown, from the dynamo_timed metrics (seconds summed over every graph). The phases
# nest (the backend runs inside dynamo's compile, inductor inside AOT autograd), so each is
# reported exclusive of the ones inside it: (phase, metric, metrics it contains).
PHASES = (
    ("dynamo trace", "bytecode_tracing", ()),
    ("AOT autograd", "create_aot_dispatcher_function", ("compile_fx_inner",)),
    ("inductor lowering", "GraphLowering.run", ()),
    ("inductor scheduling + codegen", "GraphLowering.codegen", ()),
    (
        "C++ compile + load (waited for)",
        "GraphLowering.compile_to_module",
        ("GraphLowering.codegen",),
    ),
    ("total compile", "_compile.compile_inner", ()),
)


# peer -> (torch.compile options, torch._inductor.config settings, environment): fdl as shipped,
# then one lever changed each (the levers of docs/benchmarks.md)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, str]]] = {
    "fdl": ({}, {}, {}),
    "fdl, compile_threads=1": ({}, {"compile_threads": 1}, {}),
    "fdl, cpp_wrapper": ({}, {"cpp_wrapper": True}, {}),
    "fdl, cpp.vec_isa_ok (no ISA dry-compile)": ({}, {"cpp.vec_isa_ok": True}, {}),
    "fdl, no precompiled header": ({}, {"cpp_cache_precompile_headers": False}, {}),
    "fdl, combo_kernels": ({}, {"combo_kernels": True}, {}),
}

TARGET_S = 10.0  # seconds to the first finished step, cold, on the 2-core machine


def phase_seconds(metrics: dict[str, float]) -> dict[str, float]:
    """Exclusive seconds per phase of :data:`PHASES` (NaN where a metric is absent)."""
    out = {}
    for phase, metric, inner in PHASES:
        if metric not in metrics:
            out[phase] = float("nan")
            continue
        out[phase] = metrics[metric] - sum(metrics.get(m, 0.0) for m in inner)
    return out


def child(options: dict[str, Any]) -> dict[str, Any]:
    """Build the step and time its first call, in this (fresh) process; a JSON-able record."""
    import torch

    import fdl
    from benchmarks._harness import load_example

    torch.set_num_threads(options.get("threads") or torch.get_num_threads())
    # interpreter start-up and imports: from the parent's spawn (wall clock) to here
    import_s = time.time() - options.get("spawned_at", time.time())
    for name, value in options.get("inductor", {}).items():
        setattr_path(torch._inductor.config, name, value)
    model = load_example("mnist_cnn").CNN()
    k1, k2, k3 = fdl.random.split(fdl.random.key(0), 3)
    params = model.init(k1)
    x = fdl.random.normal(k2, (64, 1, 28, 28))
    y = fdl.random.randint(k3, (64,), 0, 10)
    opt = fdl.optim.adam(lr=1e-3)

    def loss_fn(p: Any, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return fdl.losses.nll_loss(model.apply(p, xb), yb)

    step = fdl.train.make_train_step(loss_fn, opt, compile=options.get("compile", True))
    state = opt.init(params)
    t1 = time.perf_counter()
    params, state, loss = step(params, state, x, y)
    first_s = time.perf_counter() - t1
    steady = []
    for _ in range(options.get("steady_steps", 10)):
        t2 = time.perf_counter()
        params, state, loss = step(params, state, x, y)
        steady.append(time.perf_counter() - t2)
    from torch._dynamo.utils import compilation_time_metrics, counters

    metrics = {k: sum(v) for k, v in compilation_time_metrics.items()}
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "import_s": import_s,
        "first_step_s": first_s,
        "steady_ms": sorted(steady)[len(steady) // 2] * 1e3,
        "phases": phase_seconds(metrics),
        "metrics": metrics,
        "self_cpu_s": own.ru_utime + own.ru_stime,
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "loss": float(loss),
        "threads": torch.get_num_threads(),
    }


def setattr_path(obj: Any, dotted: str, value: Any) -> None:
    """``setattr`` on a dotted path (``"cpp.threads"`` on ``torch._inductor.config``)."""
    *head, last = dotted.split(".")
    for part in head:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def cold_env(cache_dir: str, extra: dict[str, str], base: dict[str, str] | None = None) -> dict:
    """The child's environment: an empty inductor cache of its own, no remote caches."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "TORCHINDUCTOR_CACHE_DIR": cache_dir,
            "TRITON_CACHE_DIR": os.path.join(cache_dir, "triton"),
            "TORCHINDUCTOR_FX_GRAPH_REMOTE_CACHE": "0",
            "TORCHINDUCTOR_AUTOGRAD_REMOTE_CACHE": "0",
        }
    )
    env.update(extra)
    return env


def measure_cold(options: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """One fresh child process with an empty cache; its record (``wall_s`` added)."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="fdl-cold-compile-") as cache:
        options = {**options, "spawned_at": time.time()}
        cmd = [sys.executable, "-m", "benchmarks.compile_time", "--child", json.dumps(options)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd,
            env=cold_env(cache, env or {}),
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        kernels = len(list(Path(cache).rglob("*.so")))
    if proc.returncode != 0:
        raise RuntimeError(f"cold-compile child failed:\n{proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record["wall_s"] = wall
    # CPU seconds of the child and everything it waited for (compile workers, the C++ compiler):
    # under contention a steadier measure of the work than wall time
    record["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    record["shared_objects"] = kernels
    return record


def describe(record: dict[str, Any]) -> str:
    """The breakdown as one note: phases, graphs, breaks, steady step."""
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in record["phases"].items())
    return (
        f"{phases}; CPU {record['cpu_s']:.0f} s (this process {record['self_cpu_s']:.0f} s, "
        f"C++ compiler and workers the rest); {record['shared_objects']} compiled libraries; "
        f"{record['graphs']} graph(s), {record['graph_breaks']} graph break(s); "
        f"steady step {record['steady_ms']:.2f} ms; imports {record['import_s']:.1f} s; "
        f"torch threads {record['threads']}"
    )


def run(quick: bool = False) -> list[Result]:
    """Cold first-step seconds of each variant (fresh process each, empty caches)."""
    import torch

    threads = torch.get_num_threads()
    repeats = 1 if quick else 3
    names = ["fdl"] if quick else list(VARIANTS)
    out = []
    for name in names:
        compile_opts, inductor, env = VARIANTS[name]
        options = {"compile": compile_opts or True, "inductor": inductor, "threads": threads}
        records = [measure_cold(options, env) for _ in range(repeats if name == "fdl" else 1)]
        first = Timing([r["first_step_s"] for r in records])
        mid = sorted(records, key=lambda r: r["first_step_s"])[len(records) // 2]
        target = f"target ≤ {TARGET_S:.0f} s; " if name == "fdl" else ""
        out.append(
            result(
                WORKLOAD,
                name,
                first,
                compile_s=mid["first_step_s"],
                note=target + describe(mid),
                extra={"record": mid},
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(child(json.loads(argv[1]))))
        return
    print(format_table(run(quick="--quick" in argv)))


if __name__ == "__main__":
    main()
