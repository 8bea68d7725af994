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

Run: ``python -m benchmarks.train_step`` (``--quick`` for fewer repeats).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

import fdl
from benchmarks import _workloads as W
from benchmarks._flops import count_flops
from benchmarks._harness import (
    Result,
    Timing,
    format_table,
    load_example,
    measure,
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


def _workload(
    name: str,
    torch_net: Callable[[], torch.nn.Module],
    fdl_model: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    quick: bool,
) -> list[Result]:
    torch.manual_seed(0)
    nets = [torch_net() for _ in range(5 if x.dim() == 4 else 3)]
    for net in nets[1:]:
        net.load_state_dict(nets[0].state_dict())
    params = fdl.nn.load_state_dict(
        {k: v.detach().clone() for k, v in nets[0].state_dict().items()}, fdl_model
    )
    peers = [
        ("fdl", _fdl_step(fdl_model, params, x, y), "make_train_step, torch.compile"),
        ("torch eager", _torch_step(nets[1], x, y, compiled=False), "nn.Module + optim.Adam"),
        (
            "torch.compile + fused Adam",
            _torch_step(nets[2], x, y, compiled=True),
            "torch.compile(module), Adam(fused=True)",
        ),
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
                _torch_step(nets[3], x, y, compiled=False, channels_last=True),
                "module and input .to(memory_format=torch.channels_last)",
            ),
            (
                "torch.compile channels-last",
                _torch_step(nets[4], x, y, compiled=True, channels_last=True),
                "torch.compile(module), Adam(fused=True), channels-last",
            ),
        ]
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
    return [
        result(
            name,
            peer,
            Timing(t),
            compile_s=c,
            note=f"{note}; conv + matmul kernels {k:.2f} ms",
            extra={"kernel_ms": k},
        )
        for (peer, _, note), t, c, k in zip(peers, times, compile_s, kernels, strict=True)
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


def run(quick: bool = False) -> list[Result]:
    """Time one training step of each peer on each workload."""
    cnn_torch, cnn_fdl = load_example("mnist_cnn_torch"), load_example("mnist_cnn")
    k1, k2, k3, k4 = fdl.random.split(fdl.random.key(0), 4)
    x_img = fdl.random.normal(k1, (W.CNN_BATCH, 1, 28, 28))
    y_img = fdl.random.randint(k2, (W.CNN_BATCH,), 0, 10)
    x_vec = fdl.random.normal(k3, (W.MLP_BATCH, 784))
    y_vec = fdl.random.randint(k4, (W.MLP_BATCH,), 0, 10)
    results = _workload(W.CNN, cnn_torch.CNN, cnn_fdl.CNN(), x_img, y_img, quick)
    results += _workload(W.MLP, _TorchMLP, _FdlMLP(), x_vec, y_vec, quick)
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
    W.MLP: [{"text": "≥ 2× faster than torch eager", "vs": "torch eager", "max_ratio": 0.5}],
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
    args = parser.parse_args()
    print(threads_note())
    print(format_table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
