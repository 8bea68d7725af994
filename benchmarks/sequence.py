"""Sequence models: an LSTM forward+backward and a Transformer encoder layer train step.

Workloads (random data, float32):

- ``LSTM``: 2 layers, input 256, hidden 256, seq 64, batch 32 (``batch_first``);
  forward and backward of ``mean(output ** 2)`` with respect to every weight and the input.
- ``Transformer encoder layer``: d_model 256, 4 heads, feed-forward 1024, seq 128,
  batch 32, dropout 0, post-norm; one full Adam train step on the mean squared
  error to a random target.

Peers:

- ``fdl`` / ``fdl eager``: the fdl layer's pure ``apply`` under ``torch.func.grad``,
  compiled with ``torch.compile(fullgraph=True)`` or eager; for the Transformer,
  ``fdl.train.make_train_step`` (compiled).
- ``torch eager``: ``nn.LSTM`` (its fused oneDNN/ATen kernel) or
  ``nn.TransformerEncoderLayer`` with ``torch.optim.Adam``, ``backward()``.
- ``torch.compile``: the same module under ``torch.compile`` (Adam ``fused=True``
  for the train step).

Interleaved repeats (every peer once per round), medians.
Run: ``python -m benchmarks.sequence`` (``--quick`` for fewer repeats).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

import fdl
from benchmarks._harness import (
    Result,
    Timing,
    format_table,
    measure,
    result,
    threads_note,
    time_first_call,
)

LSTM = "LSTM 2x256, seq 64, batch 32: forward + backward"
TRANSFORMER = "Transformer encoder layer d256 h4 ff1024, seq 128, batch 32: Adam train step"


def _interleaved(peers: list[tuple[str, Callable[[], Any], str]], workload: str, quick: bool):
    repeats, number = (3, 3) if quick else (10, 5)
    compile_s = [time_first_call(call) for _, call, _ in peers]
    for _, call, _ in peers:
        measure(call, warmup=3, repeats=1, number=1)
    times: list[list[float]] = [[] for _ in peers]
    for _ in range(repeats):
        for i, (_, call, _) in enumerate(peers):
            times[i] += measure(call, warmup=0, repeats=1, number=number).times
    return [
        result(workload, peer, Timing(t), compile_s=c, note=f"{note}; {threads_note()}")
        for (peer, _, note), t, c in zip(peers, times, compile_s, strict=True)
    ]


def _lstm(quick: bool) -> list[Result]:
    torch.manual_seed(0)
    net = torch.nn.LSTM(256, 256, num_layers=2, batch_first=True)
    layer = fdl.nn.LSTM(256, 256, num_layers=2, batch_first=True)
    params = fdl.nn.load_state_dict(
        {k: v.detach().clone() for k, v in net.state_dict().items()}, layer
    )
    x = torch.randn(32, 64, 256)

    def loss(p: Any, xb: torch.Tensor) -> torch.Tensor:
        out, _ = layer.apply(p, xb)
        return out.square().mean()

    grad = torch.func.grad(loss, argnums=(0, 1))
    compiled = torch.compile(grad, fullgraph=True)
    twin = torch.nn.LSTM(256, 256, num_layers=2, batch_first=True)
    twin.load_state_dict(net.state_dict())
    net_c = torch.compile(twin)
    x_req = x.clone().requires_grad_(True)

    def torch_call(module: torch.nn.Module) -> Callable[[], None]:
        def call() -> None:
            module.zero_grad(set_to_none=True)
            x_req.grad = None
            out, _ = module(x_req)
            out.square().mean().backward()

        return call

    peers = [
        ("fdl", lambda: compiled(params, x), "LSTM.apply under grad, torch.compile"),
        ("fdl eager", lambda: grad(params, x), "LSTM.apply under torch.func.grad"),
        ("torch eager", torch_call(net), "nn.LSTM (fused ATen kernel), backward()"),
        ("torch.compile", torch_call(net_c), "torch.compile(nn.LSTM)"),
    ]
    return _interleaved(peers, LSTM, quick)


def _transformer(quick: bool) -> list[Result]:
    torch.manual_seed(0)
    kwargs = dict(d_model=256, nhead=4, dim_feedforward=1024, dropout=0.0, batch_first=True)
    nets = [torch.nn.TransformerEncoderLayer(**kwargs) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    layer = fdl.nn.TransformerEncoderLayer(**kwargs)
    params = fdl.nn.load_state_dict(
        {k: v.detach().clone() for k, v in nets[0].state_dict().items()}, layer
    )
    x, target = torch.randn(32, 128, 256), torch.randn(32, 128, 256)
    opt = fdl.optim.adam(lr=1e-3)

    def loss_fn(p: Any, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return fdl.losses.mse_loss(layer.apply(p, xb), yb)

    step = fdl.train.make_train_step(loss_fn, opt)
    carry = {"params": params, "state": opt.init(params)}

    def fdl_call() -> None:
        carry["params"], carry["state"], _ = step(carry["params"], carry["state"], x, target)

    def torch_call(net: torch.nn.Module, compiled: bool) -> Callable[[], None]:
        t_opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=compiled or None)
        forward = torch.compile(net) if compiled else net

        def call() -> None:
            t_opt.zero_grad()
            torch.nn.functional.mse_loss(forward(x), target).backward()
            t_opt.step()

        return call

    peers = [
        ("fdl", fdl_call, "make_train_step, torch.compile"),
        ("torch eager", torch_call(nets[0], False), "nn.TransformerEncoderLayer + optim.Adam"),
        ("torch.compile", torch_call(nets[1], True), "torch.compile(module), Adam(fused=True)"),
    ]
    return _interleaved(peers, TRANSFORMER, quick)


_TARGETS = {
    LSTM: [{"text": "not slower than torch eager", "vs": "torch eager", "max_ratio": 1.0}],
    TRANSFORMER: [{"text": "not slower than torch eager", "vs": "torch eager", "max_ratio": 1.0}],
}


def run(quick: bool = False) -> list[Result]:
    """Time every peer on both sequence workloads."""
    results = _lstm(quick) + _transformer(quick)
    for r in results:
        if r.peer == "fdl":
            r.extra["targets"] = _TARGETS[r.workload]
    return results


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
