"""Written-out formulas vs torch's fused kernels: cross-entropy, layer norm, batch norm.

Each workload times forward + backward (gradient w.r.t. the input and, for the
norms, the params). Peers: ``fdl`` (eager), ``torch`` (the ``torch.nn.functional``
kernel, eager), ``fdl compiled`` and ``torch compiled`` (``torch.compile``,
inductor). The question answered: what does writing the formula out cost
eagerly, and does compilation win it back?

Run: ``python -m benchmarks.losses_norms`` (``--quick`` for fewer repeats).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

import fdl
import fdl.losses
import fdl.nn.functional as FF
from benchmarks._harness import Result, format_table, measure, result, threads_note, time_first_call


def _grad_fn(loss: Callable[..., torch.Tensor], argnums: tuple[int, ...]) -> Callable:
    return torch.func.grad(loss, argnums=argnums)


def _workloads() -> list[tuple[str, Callable, Callable, tuple]]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(256, 1000, generator=g)
    labels = torch.randint(0, 1000, (256,), generator=g)
    x_ln = torch.randn(32, 128, 256, generator=g)
    w_ln, b_ln = torch.ones(256), torch.zeros(256)
    x_bn = torch.randn(32, 64, 16, 16, generator=g)
    w_bn, b_bn = torch.ones(64), torch.zeros(64)
    return [
        (
            "cross_entropy fwd+bwd, logits (256, 1000), label_smoothing 0.1",
            lambda x, y: fdl.losses.cross_entropy(x, y, label_smoothing=0.1),
            lambda x, y: F.cross_entropy(x, y, label_smoothing=0.1),
            (logits, labels),
        ),
        (
            "layer_norm fwd+bwd, (32, 128, 256) over 256",
            lambda x, w, b: FF.layer_norm(x, (256,), w, b).square().sum(),
            lambda x, w, b: F.layer_norm(x, (256,), w, b).square().sum(),
            (x_ln, w_ln, b_ln),
        ),
        (
            "batch_norm (train) fwd+bwd, (32, 64, 16, 16)",
            lambda x, w, b: FF.batch_norm(x, None, None, w, b, training=True).square().sum(),
            lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True).square().sum(),
            (x_bn, w_bn, b_bn),
        ),
    ]


def run(quick: bool = False) -> list[Result]:
    repeats = 5 if quick else 20
    results: list[Result] = []
    for name, fdl_loss, torch_loss, args in _workloads():
        argnums = tuple(i for i, a in enumerate(args) if a.is_floating_point())
        peers: list[tuple[str, Callable, float | None]] = []
        for peer, loss in [("fdl", fdl_loss), ("torch", torch_loss)]:
            peers.append((peer, _grad_fn(loss, argnums), None))
        for peer, loss in [("fdl compiled", fdl_loss), ("torch compiled", torch_loss)]:
            fn = torch.compile(_grad_fn(loss, argnums), fullgraph=True)
            compile_s = time_first_call(lambda fn=fn, args=args: fn(*args))
            peers.append((peer, fn, compile_s))
        for peer, fn, compile_s in peers:
            timing = measure(lambda fn=fn, args=args: fn(*args), warmup=3, repeats=repeats)
            results.append(result(name, peer, timing, compile_s=compile_s, note=threads_note()))
    return results


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
    print(threads_note())
