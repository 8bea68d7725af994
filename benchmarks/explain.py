"""Integrated gradients on the MNIST CNN: fdl against Captum.

Workload: the CNN of ``examples/mnist_cnn.py`` (random init: the cost does not
depend on the weights), 1000 images (100 with ``--quick``), integrated
gradients from a black baseline with 50 Gauss–Legendre steps, the target
class given per image, the convergence delta returned. Images go through in
batches of 100, and each batch's ``50 × 100`` interpolated points in chunks of
1000 rows (``internal_batch_size=1000`` for both libraries), so peak memory
stays small and both peers run the same batch shapes.

Peers:

- ``fdl``: ``fdl.explain.integrated_gradients`` on ``model.apply``, the whole
  per-batch attribution under ``torch.compile``.
- ``fdl eager``: the same function, eager.
- ``Captum``: ``captum.attr.IntegratedGradients(torch_module).attribute(...)``
  with the same arguments, on the torch twin holding the same weights.

Interleaved repeats (every peer once per round), medians of whole-dataset times.
Run: ``python -m benchmarks.explain`` (``--quick``: 100 images, fewer repeats).
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
    load_example,
    measure,
    result,
    threads_note,
    time_first_call,
)

STEPS, BATCH, CHUNK = 50, 100, 1000


def workload(images: int) -> str:
    return f"integrated gradients, MNIST CNN, {images} images x {STEPS} steps"


def _peers(images: int) -> list[tuple[str, Callable[[], Any], str]]:
    from captum.attr import IntegratedGradients

    cnn_torch, cnn_fdl = load_example("mnist_cnn_torch"), load_example("mnist_cnn")
    torch.manual_seed(0)
    net = cnn_torch.CNN().eval()
    model = cnn_fdl.CNN()
    params = fdl.nn.load_state_dict(
        {k: v.detach().clone() for k, v in net.state_dict().items()}, model
    )
    k1, k2 = fdl.random.split(fdl.random.key(0))
    x = fdl.random.uniform(k1, (images, 1, 28, 28))
    target = fdl.random.randint(k2, (images,), 0, 10)
    batches = [(x[i : i + BATCH], target[i : i + BATCH]) for i in range(0, images, BATCH)]

    def attribute(xb: torch.Tensor, tb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fdl.explain.integrated_gradients(
            lambda z: model.apply(params, z),
            xb,
            tb,
            n_steps=STEPS,
            method="gausslegendre",
            internal_batch_size=CHUNK,
            return_convergence_delta=True,
        )

    compiled = torch.compile(attribute, fullgraph=True)
    ig = IntegratedGradients(net)

    def over(fn: Callable[..., Any]) -> Callable[[], None]:
        def call() -> None:
            for xb, tb in batches:
                fn(xb, tb)

        return call

    def captum(xb: torch.Tensor, tb: torch.Tensor) -> Any:
        return ig.attribute(
            xb,
            target=tb,
            n_steps=STEPS,
            method="gausslegendre",
            internal_batch_size=CHUNK,
            return_convergence_delta=True,
        )

    return [
        ("fdl", over(compiled), "integrated_gradients, torch.compile"),
        ("fdl eager", over(attribute), "integrated_gradients, eager"),
        ("Captum", over(captum), "captum.attr.IntegratedGradients"),
    ]


def run(quick: bool = False) -> list[Result]:
    """Time each peer attributing the whole image set."""
    images, repeats = (100, 3) if quick else (1000, 3)
    peers = _peers(images)
    compile_s = [time_first_call(call) for _, call, _ in peers]
    times: list[list[float]] = [[] for _ in peers]
    for _ in range(repeats):
        for i, (_, call, _) in enumerate(peers):
            times[i] += measure(call, warmup=0, repeats=1).times
    name = workload(images)
    results = [
        result(name, peer, Timing(t), compile_s=c, note=f"{note}; {threads_note()}")
        for (peer, _, note), t, c in zip(peers, times, compile_s, strict=True)
    ]
    for r in results:
        if r.peer == "fdl":
            r.extra["targets"] = [
                {"text": "not slower than Captum", "vs": "Captum", "max_ratio": 1.0}
            ]
    return results


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
