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

The record also holds the graph's size: the ops dynamo captured, inductor's IR
nodes before fusion, the kernels it generated and the lines of their C++.

Peers: ``fdl`` (as shipped, three cold processes) and variants with one
inductor setting changed (:data:`VARIANTS`, one process each); ``--quick``
measures ``fdl`` once.

The precompiled header that every kernel's C++ compile includes is kept
outside the inductor cache, under ``$TMPDIR/torchinductor_$USER`` (torch keeps
it global on purpose), so a cold run here still finds the header built by an
earlier run; ``--fresh-pch`` gives the child an empty ``TMPDIR`` too, which
measures the very first compile on a new machine (header build included).

One lever from the command line (one cold process per repeat, printed as a table)::

    python -m benchmarks.compile_time --set max_fusion_size=256 --set cpp.vec_isa_ok=true
    python -m benchmarks.compile_time --peer torch      # torch.compile(module) + fused Adam
    python -m benchmarks.compile_time --optimizer sgd --repeats 3 --fresh-pch

``--set NAME=VALUE`` sets ``torch._inductor.config.NAME`` in the child (VALUE is
JSON: ``true``, ``256``, ``"O1"``), ``--peer torch`` compiles the equivalent
``torch.nn.Module`` (``examples/mnist_cnn_torch.py``) under ``torch.compile``
and steps ``torch.optim.Adam(fused=True)`` eagerly, ``--optimizer sgd`` swaps
fdl's Adam for SGD (the optimizer's share of the compile).

Run: ``python -m benchmarks.compile_time`` (``--quick``: one repeat, fdl alone).
"""

from __future__ import annotations

import argparse
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
    "fdl, generated scatter-add (cpp.fallback_scatter_reduce_sum=False)": (
        {},
        {"cpp.fallback_scatter_reduce_sum": False},
        {},
    ),
}

TARGET_S = 10.0  # seconds to the first finished step, cold, on the 2-core machine


def phase_seconds(metrics: dict[str, float]) -> dict[str, float]:
    """Exclusive seconds per phase of :data:`PHASES` (NaN where a metric is absent).

    NaN also where the exclusive time comes out negative: the phases did not nest
    (a module's backward graph is compiled at its first backward, outside AOT autograd's
    dispatcher, so its inductor time is not inside the AOT metric).
    """
    out = {}
    for phase, metric, inner in PHASES:
        if metric not in metrics:
            out[phase] = float("nan")
            continue
        exclusive = metrics[metric] - sum(metrics.get(m, 0.0) for m in inner)
        out[phase] = exclusive if exclusive >= 0 else float("nan")
    return out


def child(options: dict[str, Any]) -> dict[str, Any]:
    """Build the step and time its first call, in this (fresh) process; a JSON-able record."""
    import torch

    torch.set_num_threads(options.get("threads") or torch.get_num_threads())
    # interpreter start-up and imports: from the parent's spawn (wall clock) to here
    import_s = time.time() - options.get("spawned_at", time.time())
    for name, value in options.get("inductor", {}).items():
        setattr_path(torch._inductor.config, name, value)
    build = _torch_step if options.get("peer", "fdl") == "torch" else _fdl_step
    step = build(options)
    t1 = time.perf_counter()
    loss = step()
    first_s = time.perf_counter() - t1
    steady = []
    for _ in range(options.get("steady_steps", 10)):
        t2 = time.perf_counter()
        loss = step()
        steady.append(time.perf_counter() - t2)
    from torch._dynamo.utils import compilation_time_metrics, counters
    from torch._inductor import metrics as inductor_metrics

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
        # the graph's size: ops dynamo captured, inductor IR nodes before fusion, kernels
        "dynamo_ops": int(counters["stats"]["calls_captured"]),
        "ir_nodes": int(inductor_metrics.ir_nodes_pre_fusion),
        "kernels": int(inductor_metrics.generated_kernel_count),
        "loss": float(loss),
        "threads": torch.get_num_threads(),
    }


def _batch() -> tuple[Any, Any, Any]:
    """The params key and one batch of 64 random images with labels."""
    import fdl

    k1, k2, k3 = fdl.random.split(fdl.random.key(0), 3)
    return k1, fdl.random.normal(k2, (64, 1, 28, 28)), fdl.random.randint(k3, (64,), 0, 10)


def _fdl_step(options: dict[str, Any]) -> Any:
    """fdl's compiled train step on the example CNN, as a call returning the loss."""
    import torch

    import fdl
    from benchmarks._harness import load_example

    model = load_example("mnist_cnn").CNN()
    key, x, y = _batch()
    params = model.init(key)
    opt = {"adam": fdl.optim.adam(lr=1e-3), "sgd": fdl.optim.sgd(lr=1e-2)}[
        options.get("optimizer", "adam")
    ]

    def loss_fn(p: Any, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return fdl.losses.nll_loss(model.apply(p, xb), yb)

    step = fdl.train.make_train_step(loss_fn, opt, compile=options.get("compile", True))
    carry = [params, opt.init(params)]

    def call() -> torch.Tensor:
        carry[0], carry[1], loss = step(carry[0], carry[1], x, y)
        return loss

    return call


def _torch_step(options: dict[str, Any]) -> Any:
    """The peer: ``torch.compile`` of the same CNN as a module, eager fused Adam."""
    import torch

    from benchmarks._harness import load_example

    torch.manual_seed(0)
    net = load_example("mnist_cnn_torch").CNN()
    _, x, y = _batch()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    compile_opts = options.get("compile", True)
    forward = torch.compile(net, **({} if compile_opts is True else compile_opts))

    def call() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(forward(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return call


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


def measure_cold(
    options: dict[str, Any], env: dict[str, str] | None = None, fresh_pch: bool = False
) -> dict[str, Any]:
    """One fresh child process with an empty cache; its record (``wall_s`` added).

    ``fresh_pch``: an empty ``TMPDIR`` too, so the precompiled header is built (see the
    module docstring).
    """
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="fdl-cold-compile-") as cache:
        options = {**options, "spawned_at": time.time()}
        cmd = [sys.executable, "-m", "benchmarks.compile_time", "--child", json.dumps(options)]
        extra = dict(env or {})
        if fresh_pch:
            os.makedirs(os.path.join(cache, "tmp"))
            extra["TMPDIR"] = os.path.join(cache, "tmp")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd,
            env=cold_env(cache, extra),
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        kernels = len(list(Path(cache).rglob("*.so")))
        cpp_lines = sum(len(f.read_text().splitlines()) for f in Path(cache).rglob("*.cpp"))
    if proc.returncode != 0:
        raise RuntimeError(f"cold-compile child failed:\n{proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    record["wall_s"] = wall
    # CPU seconds of the child and everything it waited for (compile workers, the C++ compiler):
    # under contention a steadier measure of the work than wall time
    record["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    record["shared_objects"] = kernels
    record["cpp_lines"] = cpp_lines
    return record


def describe(record: dict[str, Any]) -> str:
    """The breakdown as one note: phases, graphs, breaks, steady step."""
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in record["phases"].items())
    return (
        f"{phases}; CPU {record['cpu_s']:.0f} s (this process {record['self_cpu_s']:.0f} s, "
        f"C++ compiler and workers the rest); {record['shared_objects']} compiled libraries; "
        f"{record.get('dynamo_ops', 0)} ops traced, {record.get('ir_nodes', 0)} IR nodes, "
        f"{record.get('kernels', 0)} kernels, {record.get('cpp_lines', 0)} lines of C++; "
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


def lever(
    settings: dict[str, Any],
    *,
    peer: str = "fdl",
    optimizer: str = "adam",
    repeats: int = 1,
    fresh_pch: bool = False,
) -> Result:
    """One lever measured cold: ``repeats`` fresh processes with these inductor ``settings``."""
    import torch

    options = {
        "compile": True,
        "inductor": settings,
        "threads": torch.get_num_threads(),
        "peer": peer,
        "optimizer": optimizer,
    }
    records = [measure_cold(options, fresh_pch=fresh_pch) for _ in range(repeats)]
    mid = sorted(records, key=lambda r: r["first_step_s"])[len(records) // 2]
    name = "fdl" if peer == "fdl" else "torch.compile + fused Adam"
    labels = [f"{k}={json.dumps(v)}" for k, v in settings.items()]
    labels += [f"optimizer={optimizer}"] * (optimizer != "adam") + ["fresh PCH"] * fresh_pch
    if labels:
        name += ", " + ", ".join(labels)
    cpu = ", ".join(f"{r['cpu_s']:.0f}" for r in records)
    return result(
        WORKLOAD,
        name,
        Timing([r["first_step_s"] for r in records]),
        compile_s=mid["first_step_s"],
        note=f"CPU s per run {cpu}; " + describe(mid),
        extra={"records": records},
    )


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["a.b=true", "n=256"]`` -> ``{"a.b": True, "n": 256}`` (values are JSON, else strings)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {pair!r}")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(child(json.loads(argv[1]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, fdl alone")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--peer", choices=("fdl", "torch"), default=None)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--fresh-pch", action="store_true", help="build the header too")
    args = parser.parse_args(argv)
    if args.set or args.peer or args.optimizer != "adam" or args.fresh_pch or args.repeats > 1:
        row = lever(
            parse_settings(args.set),
            peer=args.peer or "fdl",
            optimizer=args.optimizer,
            repeats=args.repeats,
            fresh_pch=args.fresh_pch,
        )
        print(format_table([row]))
        return
    print(format_table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
