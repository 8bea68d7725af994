"""One training step: fdl's compiled pure step against PyTorch training loops.

Workloads (random inputs, 10 classes, nll_loss on log_softmax, Adam lr 1e-3):

- ``cnn_b64``: the MNIST CNN of ``examples/mnist_cnn.py`` at batch 64.
- ``mlp_b128``: an MLP 784-256-256-10 at batch 128, where per-op dispatch dominates.

Peers, each a full step (forward, backward, Adam update):

- ``fdl``: ``fdl.train.make_train_step`` (``torch.compile(fullgraph=True)``).
- ``torch eager``: ``nn.Module`` + ``torch.optim.Adam``; ``zero_grad``,
  ``backward``, ``step``.
- ``torch.compile + fused Adam``: the same module under ``torch.compile`` with
  ``torch.optim.Adam(fused=True)``.

and on the CNN the same three in channels-last memory (``fdl channels-last``:
``make_train_step(..., memory_format="channels_last")``; the torch peers: model
and input ``.to(memory_format=torch.channels_last)``).

Both workloads report where each peer's time goes (profiler self time per
kernel class: convolutions, matmuls, pooling, elementwise, loss, Adam and the
framework rest, see :mod:`benchmarks._breakdown`). The MLP workload also runs
fdl and torch eager on one thread, and times the step's 8 matmuls alone (MKL on
all threads and on one, oneDNN; the JAX peer's matmuls are in
:mod:`benchmarks.jax_peers`).

Run: ``python -m benchmarks.train_step`` (``--quick`` for fewer repeats;
``--workload mlp --jax`` for the MLP alone, with its JAX peer).
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable
from typing import Any

import torch

import fdl
from benchmarks import _breakdown
from benchmarks import _workloads as W
from benchmarks._flops import count_flops
from benchmarks._harness import (
    Result,
    Timing,
    format_table,
    load_example,
    measure,
    per_gemm_note,
    result,
    threads_note,
    time_first_call,
)


class _TorchMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 256)
        self.fc2 = torch.nn.Linear(256, 256)
        self.fc3 = torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return torch.log_softmax(self.fc3(x), dim=1)


class _FdlMLP(fdl.nn.Layer):
    def __init__(self) -> None:
        self.fc1 = fdl.nn.Linear(784, 256)
        self.fc2 = fdl.nn.Linear(256, 256)
        self.fc3 = fdl.nn.Linear(256, 10)

    def init(self, key: torch.Tensor) -> dict[str, Any]:
        k1, k2, k3 = fdl.random.split(key, 3)
        return {"fc1": self.fc1.init(k1), "fc2": self.fc2.init(k2), "fc3": self.fc3.init(k3)}

    def apply(self, params: dict[str, Any], x: torch.Tensor, **_: Any) -> torch.Tensor:
        F = fdl.nn.functional
        x = F.relu(self.fc1.apply(params["fc1"], x))
        x = F.relu(self.fc2.apply(params["fc2"], x))
        return F.log_softmax(self.fc3.apply(params["fc3"], x), dim=1)


def _fdl_step(
    model: Any,
    params: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    memory_format: fdl.train.MemoryFormat = "preserve",
) -> Callable[[], None]:
    opt = fdl.optim.adam(lr=1e-3)

    def loss_fn(p: Any, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return fdl.losses.nll_loss(model.apply(p, xb), yb)

    step = fdl.train.make_train_step(loss_fn, opt, memory_format=memory_format)
    carry = {"params": params, "state": opt.init(params)}

    def call() -> None:
        carry["params"], carry["state"], _ = step(carry["params"], carry["state"], x, y)

    return call


def _torch_step(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    compiled: bool,
    channels_last: bool = False,
) -> Callable[[], None]:
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=compiled or None)
    forward = torch.compile(net) if compiled else net

    def call() -> None:
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(forward(x), y)
        loss.backward()
        opt.step()

    return call


def _peers(
    nets: list[torch.nn.Module], fdl_model: Any, params: Any, x: torch.Tensor, y: torch.Tensor
) -> list[tuple[str, Callable[[], None], str]]:
    """(name, step, note) of each peer; ``nets`` holds one torch module per torch peer."""
    peers = [
        ("fdl", _fdl_step(fdl_model, params, x, y), "make_train_step, torch.compile"),
        ("torch eager", _torch_step(nets[0], x, y, compiled=False), "nn.Module + optim.Adam"),
        (
            "torch.compile + fused Adam",
            _torch_step(nets[1], x, y, compiled=True),
            "torch.compile(module), Adam(fused=True)",
        ),
    ]
    if x.dim() == 2:  # the MLP: its small matmuls on one thread, fdl and torch eager alike
        peers += [
            (f"{peer}, 1 thread", _on_threads(call, 1), f"{note}; torch.set_num_threads(1)")
            for peer, call, note in peers[:2]
        ]
    if x.dim() == 4:  # image batches: the same peers in channels-last memory
        peers += [
            (
                "fdl channels-last",
                _fdl_step(fdl_model, params, x, y, memory_format="channels_last"),
                'make_train_step(memory_format="channels_last")',
            ),
            (
                "torch eager channels-last",
                _torch_step(nets[2], x, y, compiled=False, channels_last=True),
                "module and input .to(memory_format=torch.channels_last)",
            ),
            (
                "torch.compile channels-last",
                _torch_step(nets[3], x, y, compiled=True, channels_last=True),
                "torch.compile(module), Adam(fused=True), channels-last",
            ),
        ]
    return peers


def _breakdowns(
    torch_net: Callable[[], torch.nn.Module],
    fdl_model: Any,
    params: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
) -> list[dict[str, float]]:
    """Each peer's step time by kernel class (see :mod:`benchmarks._breakdown`).

    Profiled on copies of the peers compiled with inductor's kernel profiling on
    (their generated kernels then show as profiler events), so the timed peers
    run the code they would run anyway.
    """
    nets = [torch_net() for _ in range(4)]
    with _breakdown.kernel_profiling():
        peers = _peers(nets, fdl_model, params, x, y)
        for _, call, _ in peers:
            measure(call, warmup=3, repeats=1)  # compiles, with the profiling config in force
    return [_breakdown.profile_breakdown(call, steps) for _, call, _ in peers]


def _workload(
    name: str,
    torch_net: Callable[[], torch.nn.Module],
    fdl_model: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    quick: bool,
    breakdown: bool = False,
) -> list[Result]:
    torch.manual_seed(0)
    nets = [torch_net() for _ in range(5 if x.dim() == 4 else 3)]
    for net in nets[1:]:
        net.load_state_dict(nets[0].state_dict())
    params = fdl.nn.load_state_dict(
        {k: v.detach().clone() for k, v in nets[0].state_dict().items()}, fdl_model
    )
    peers = _peers(nets[1:], fdl_model, params, x, y)
    repeats, number = (5, 5) if quick else (15, 10)
    compile_s = [time_first_call(call) for _, call, _ in peers]  # includes compilation
    for _, call, _ in peers:
        measure(call, warmup=5, repeats=1, number=1)
    # round-robin repeats, so a burst of load on the shared machine hits every peer alike
    times: list[list[float]] = [[] for _ in peers]
    for _ in range(repeats):
        for i, (_, call, _) in enumerate(peers):
            times[i] += measure(call, warmup=0, repeats=1, number=number).times
    kernels = [_kernel_ms(call) for _, call, _ in peers]
    if breakdown:
        parts = _breakdowns(torch_net, fdl_model, params, x, y, 10 if quick else 30)
    else:
        parts = [{} for _ in peers]
    return [
        result(
            name,
            peer,
            Timing(t),
            compile_s=c,
            note=f"{note}; conv + matmul kernels {k:.2f} ms"
            + (f"; profiled: {_breakdown.describe(b)}" if b else ""),
            extra={"kernel_ms": k, **({"breakdown": b} if b else {})},
        )
        for (peer, _, note), t, c, k, b in zip(peers, times, compile_s, kernels, parts, strict=True)
    ]


# The oneDNN / BLAS kernels every peer calls for the same convolutions and matmuls.
_SHARED_KERNELS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::mkldnn_convolution",
    "aten::convolution_backward",
}


def _kernel_ms(call: Callable[[], None], steps: int = 10) -> float:
    """Milliseconds per step spent inside the shared convolution and matmul kernels.

    Every peer runs its convolutions and matmuls through the same aten kernels
    (compiled code calls them as extern kernels), so this time is a floor that
    no peer can go below; a peer's step minus it is what its framework adds
    (pooling, activations, loss, optimizer, dispatch).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            call()
    total_us = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in _SHARED_KERNELS)
    return total_us / steps / 1e3


def _gemm_calls(kind: str) -> dict[str, Callable[[], Any]]:
    """A call per matmul of the MLP step, in torch's layout (weights ``(out, in)``).

    ``kind``: ``"aten"`` (``torch.addmm`` / ``torch.mm``, the extern kernels of
    the compiled steps, MKL's sgemm here) or ``"onednn"``
    (``torch.ops.mkldnn._linear_pointwise``, oneDNN's fp32 matmul). Labels as
    :func:`benchmarks._workloads.mlp_matmuls`: ``fwd`` ``a @ W.T + b``, ``wgrad``
    ``g.T @ a``, ``xgrad`` ``g @ W``.
    """
    sizes = W.MLP_SIZES
    gen = torch.Generator().manual_seed(1)
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        w, b = torch.randn(n_out, n_in, generator=gen), torch.randn(n_out, generator=gen)
        a = torch.randn(W.MLP_BATCH, n_in, generator=gen)  # the layer's input
        g = torch.randn(W.MLP_BATCH, n_out, generator=gen)  # the gradient of its output
        if kind == "onednn":
            lin = torch.ops.mkldnn._linear_pointwise  # lin(u, v, c) = u @ v.T + c
            layers.append(
                {
                    "fwd": functools.partial(lin, a, w, b, "none", [], ""),
                    "wgrad": functools.partial(lin, g.t(), a.t(), None, "none", [], ""),
                    "xgrad": functools.partial(lin, g, w.t(), None, "none", [], ""),
                }
            )
        else:
            layers.append(
                {
                    "fwd": functools.partial(torch.addmm, b, a, w.t()),
                    "wgrad": functools.partial(torch.mm, g.t(), a),
                    "xgrad": functools.partial(torch.mm, g, w),
                }
            )
    return {label: layers[i][k] for label, i, k in W.mlp_matmuls()}


def _on_threads(fn: Callable[[], Any], n: int) -> Callable[[], Any]:
    def call() -> Any:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return call


def gemm_results(quick: bool = False) -> list[Result]:
    """The MLP step's 8 matmuls, each timed alone, summed: MKL on all threads and on one, oneDNN.

    Interleaved: every repeat times every matmul of every peer in turn.
    """
    threads = torch.get_num_threads()
    peers = {
        f"torch.addmm / mm (MKL), {threads} threads": _gemm_calls("aten"),
        "torch.addmm / mm (MKL), 1 thread": {
            k: _on_threads(f, 1) for k, f in _gemm_calls("aten").items()
        },
        f"oneDNN _linear_pointwise, {threads} threads": _gemm_calls("onednn"),
    }
    repeats, number = (5, 20) if quick else (15, 50)
    for calls in peers.values():
        for f in calls.values():
            measure(f, warmup=10, repeats=1)
    times = {p: {k: [] for k in calls} for p, calls in peers.items()}
    for _ in range(repeats):
        for p, calls in peers.items():
            for k, f in calls.items():
                times[p][k] += measure(f, warmup=0, repeats=1, number=number).times
    out = []
    for p, per in times.items():
        ms = {k: statistics.median(v) * 1e3 for k, v in per.items()}
        sums = Timing([sum(rep) for rep in zip(*per.values(), strict=True)])
        out.append(result(W.MLP_GEMMS, p, sums, note=per_gemm_note(ms), extra={"per_gemm_ms": ms}))
    return out


def run(quick: bool = False, workloads: tuple[str, ...] = ("cnn", "mlp")) -> list[Result]:
    """Time one training step of each peer on each workload (``"cnn"``, ``"mlp"``).

    Both get each peer's time by kernel class; the MLP also its 8 matmuls alone.
    """
    k1, k2, k3, k4 = fdl.random.split(fdl.random.key(0), 4)
    results = []
    if "cnn" in workloads:
        cnn_torch, cnn_fdl = load_example("mnist_cnn_torch"), load_example("mnist_cnn")
        x_img = fdl.random.normal(k1, (W.CNN_BATCH, 1, 28, 28))
        y_img = fdl.random.randint(k2, (W.CNN_BATCH,), 0, 10)
        results += _workload(
            W.CNN, cnn_torch.CNN, cnn_fdl.CNN(), x_img, y_img, quick, breakdown=True
        )
    if "mlp" in workloads:
        x_vec = fdl.random.normal(k3, (W.MLP_BATCH, 784))
        y_vec = fdl.random.randint(k4, (W.MLP_BATCH,), 0, 10)
        results += _workload(W.MLP, _TorchMLP, _FdlMLP(), x_vec, y_vec, quick, breakdown=True)
        results += gemm_results(quick)
    for r in results:
        if r.peer == "fdl":
            r.extra["targets"] = _TARGETS[r.workload]
    return results


_TARGETS = {
    W.CNN: [
        {"text": "≥ 1.5× faster than torch eager", "vs": "torch eager", "max_ratio": 1 / 1.5},
        {
            "text": "no slower than torch.compile + fused Adam",
            "vs": "torch.compile + fused Adam",
            "max_ratio": 1.0,
        },
    ],
    W.MLP: [
        {"text": "≥ 1.5× faster than torch eager", "vs": "torch eager", "max_ratio": 1 / 1.5},
        {
            "text": "no slower than JAX + Flax + Optax",
            "vs": W.JAX_PEER,
            "max_ratio": 1.0,
        },
    ],
}


def flops(quick: bool = False) -> dict[str, int]:
    """Matmul/conv FLOPs of one step (forward and backward) of each workload."""
    cnn = load_example("mnist_cnn_torch").CNN()
    x_img, y_img = torch.randn(W.CNN_BATCH, 1, 28, 28), torch.randint(0, 10, (W.CNN_BATCH,))
    mlp = _TorchMLP()
    x_vec, y_vec = torch.randn(W.MLP_BATCH, 784), torch.randint(0, 10, (W.MLP_BATCH,))
    nll = torch.nn.functional.nll_loss
    return {
        W.CNN: count_flops(lambda: nll(cnn(x_img), y_img).backward()),
        W.MLP: count_flops(lambda: nll(mlp(x_vec), y_vec).backward()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--workload", action="append", choices=("cnn", "mlp"), help="only this one (repeatable)"
    )
    parser.add_argument(
        "--jax", action="store_true", help="also the JAX peers of these workloads (bench extra)"
    )
    args = parser.parse_args()
    workloads = tuple(args.workload or ("cnn", "mlp"))
    results = run(quick=args.quick, workloads=workloads)
    if args.jax:
        from benchmarks import jax_peers

        results = jax_peers.run(quick=args.quick, workloads=workloads) + results
    print(threads_note())
    for name in dict.fromkeys(r.workload for r in results):
        rows = [r for r in results if r.workload == name]
        print(format_table(rows))
        print(_breakdown.markdown(rows))


if __name__ == "__main__":
    main()
