"""Per-sample gradients and DP-SGD on the document's MNIST CNN.

Peers, per batch size (64 and 256), all eager on the CPU, measured side by
side in one process (warm-up, repeats, medians):

* ``batch gradient``: one ordinary ``torch.func.grad`` of the batch loss (the floor).
* ``fdl``: ``fdl.per_sample_grads`` (rules path), per-example gradients materialised.
* ``fdl norms``: ``fdl.per_sample_grad_norms`` (no per-example gradients of fc layers).
* ``fdl vmap``: ``fdl.per_sample_grads(method="vmap")`` (plain vmap of grad).
* ``opacus``: Opacus ``GradSampleModule`` forward + backward filling ``grad_sample``.
* ``per-example loop``: ``torch.func.grad`` on each example, stacked.

and a training step: ``fdl dp step`` (``fdl.privacy.make_dp_train_step``, Adam)
against ``non-private step`` (``fdl.train.make_train_step``, eager, Adam).

Times are process CPU seconds with one torch thread: on a machine shared with
other jobs, wall-clock time mostly measures the other jobs. Peak memory is the
growth of the process's peak resident set while running the peer, measured
in a fresh subprocess per peer (``--mem``) under glibc's default allocator
policy (the child never calls ``fdl.allocator.keep_freed_memory()``), so that
it shows the peer's own peak.

Run::

    python -m benchmarks.per_sample            # full
    python -m benchmarks.per_sample --quick    # batch 64, fewer repeats
    python -m benchmarks.per_sample --sequences  # also the Transformer/LSTM classifiers
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

import fdl
from benchmarks._harness import (
    Result,
    Timing,
    format_table,
    peak_mem,
    peak_mem_child,
    result,
    threads_note,
)

PEERS = [
    "batch gradient",
    "fdl",
    "fdl norms",
    "fdl vmap",
    "opacus",
    "per-example loop",
    "non-private step",
    "fdl dp step",
]

_TARGETS = {
    "fdl": [
        {"text": "≤ 1.5× one batch gradient", "vs": "batch gradient", "max_ratio": 1.5},
        {"text": "≥ 2× faster than Opacus", "vs": "opacus", "max_ratio": 0.5},
        {
            "text": "≥ 3× faster than a per-example loop",
            "vs": "per-example loop",
            "max_ratio": 1 / 3,
        },
    ],
    "fdl dp step": [
        {"text": "≤ 1.5× a non-private step", "vs": "non-private step", "max_ratio": 1.5}
    ],
}


def _fdl_model() -> fdl.nn.Sequential:
    nn = fdl.nn
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 32, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),  # (B, 32, 14, 14)
            conv2=nn.Conv2d(32, 64, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),  # (B, 64, 7, 7)
            flatten=nn.Flatten(),  # (B, 3136)
            fc1=nn.Linear(3136, 128),
            relu3=nn.ReLU(),
            fc2=nn.Linear(128, 10),
            log_softmax=nn.LogSoftmax(dim=1),
        )
    )


def _torch_model() -> torch.nn.Module:
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Conv2d(1, 32, 3, padding=1),
        tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Conv2d(32, 64, 3, padding=1),
        tnn.ReLU(),
        tnn.MaxPool2d(2),
        tnn.Flatten(),
        tnn.Linear(3136, 128),
        tnn.ReLU(),
        tnn.Linear(128, 10),
        tnn.LogSoftmax(dim=1),
    )


def _make(peer: str, batch: int) -> Callable[[], Any]:
    """Build the zero-argument callable timed for ``peer`` at ``batch``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    model = _fdl_model()
    params = model.init(fdl.random.key(0))

    def loss_fn(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fdl.losses.nll_loss(model.apply(p, x), y)

    if peer == "batch gradient":
        grad = torch.func.grad(loss_fn)
        return lambda: grad(params, x, y)
    if peer == "fdl":
        fn = fdl.per_sample_grads(loss_fn)
        return lambda: fn(params, x, y)
    if peer == "fdl norms":
        fn = fdl.per_sample_grad_norms(loss_fn)
        return lambda: fn(params, x, y)
    if peer == "fdl vmap":
        fn = fdl.per_sample_grads(loss_fn, method="vmap")
        return lambda: fn(params, x, y)
    if peer == "per-example loop":
        grad = torch.func.grad(loss_fn)

        def loop() -> Any:
            per = [grad(params, x[i : i + 1], y[i : i + 1]) for i in range(batch)]
            return fdl.tree.stack(per)

        return loop
    if peer == "opacus":
        from opacus import GradSampleModule

        gsm = GradSampleModule(_torch_model(), loss_reduction="mean")

        def opacus_step() -> Any:
            for p in gsm.parameters():
                p.grad_sample = None
                p.grad = None
            loss = torch.nn.functional.nll_loss(gsm(x), y)
            loss.backward()
            return [p.grad_sample for p in gsm.parameters()]

        return opacus_step
    opt = fdl.optim.adam(lr=1e-3)
    state = opt.init(params)
    if peer == "non-private step":
        step = fdl.train.make_train_step(loss_fn, opt, compile=False)
        return lambda: step(params, state, x, y)
    if peer == "fdl dp step":
        step = fdl.privacy.make_dp_train_step(
            loss_fn, opt, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=batch
        )
        key = fdl.random.key(1)
        mask = torch.ones(batch, dtype=torch.bool)
        return lambda: step(params, state, key, x, y, mask=mask)
    raise ValueError(f"unknown peer {peer!r}")


SEQ_PEERS = ["batch gradient", "fdl", "fdl norms", "fdl vmap", "per-example loop"]
SEQ_VOCAB, SEQ_LEN, SEQ_DIM, SEQ_CLASSES = 1000, 32, 64, 4


def _sequence_model(kind: str) -> tuple[Any, Callable[..., torch.Tensor]]:
    """Embedding -> (2-layer TransformerEncoder | LSTM) -> pool -> Linear: params and logits."""
    nn = fdl.nn
    emb = nn.Embedding(SEQ_VOCAB, SEQ_DIM, padding_idx=0)
    fc = nn.Linear(SEQ_DIM, SEQ_CLASSES)
    if kind == "transformer":
        layer = nn.TransformerEncoderLayer(
            SEQ_DIM, 4, dim_feedforward=2 * SEQ_DIM, dropout=0.0, batch_first=True
        )
        body: Any = nn.TransformerEncoder(layer, 2)
        run_body = lambda p, h: body.apply(p, h).mean(1)  # noqa: E731  # mean-pool
    else:
        body = nn.LSTM(SEQ_DIM, SEQ_DIM, batch_first=True)
        run_body = lambda p, h: body.apply(p, h)[0][:, -1]  # noqa: E731  # last step
    keys = fdl.random.split(fdl.random.key(0), 3)
    params = {"emb": emb.init(keys[0]), "body": body.init(keys[1]), "fc": fc.init(keys[2])}

    def logits(p: Any, x: torch.Tensor) -> torch.Tensor:
        return fc.apply(p["fc"], run_body(p["body"], emb.apply(p["emb"], x)))

    return params, logits


def _make_sequence(kind: str, peer: str, batch: int) -> Callable[[], Any]:
    """The callable timed for ``peer`` on the ``kind`` sequence classifier at ``batch``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, SEQ_VOCAB, (batch, SEQ_LEN), generator=g)
    y = torch.randint(0, SEQ_CLASSES, (batch,), generator=g)
    params, logits = _sequence_model(kind)

    def loss_fn(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fdl.losses.cross_entropy(logits(p, x), y)

    if peer == "batch gradient":
        grad = torch.func.grad(loss_fn)
        return lambda: grad(params, x, y)
    if peer == "per-example loop":
        grad = torch.func.grad(loss_fn)
        return lambda: fdl.tree.stack(
            [grad(params, x[i : i + 1], y[i : i + 1]) for i in range(batch)]
        )
    fn = {
        "fdl": fdl.per_sample_grads(loss_fn),
        "fdl norms": fdl.per_sample_grad_norms(loss_fn),
        "fdl vmap": fdl.per_sample_grads(loss_fn, method="vmap"),
    }[peer]
    return lambda: fn(params, x, y)


def _path(kind: str, batch: int) -> str:
    """The path ``per_sample_grads`` takes on the ``kind`` classifier (rules or vmap)."""
    params, logits = _sequence_model(kind)
    x = torch.randint(1, SEQ_VOCAB, (batch, SEQ_LEN))
    y = torch.randint(0, SEQ_CLASSES, (batch,))
    loss_fn = lambda p, x, y: fdl.losses.cross_entropy(logits(p, x), y)  # noqa: E731
    return fdl.per_sample.per_sample_method(loss_fn)(params, x, y).method


def run_sequences(quick: bool = False) -> list[Result]:
    """Per-sample gradients of an embedding + Transformer (rules) and + LSTM (vmap) classifier."""
    torch.set_num_threads(1)
    results: list[Result] = []
    for kind in ("transformer", "lstm"):
        for batch in (16,) if quick else (32, 128):
            workload = f"{kind} classifier (T={SEQ_LEN}, d={SEQ_DIM}), per-sample, batch {batch}"
            path = _path(kind, batch)
            for peer in SEQ_PEERS:
                fn = _make_sequence(kind, peer, batch)
                slow = peer in ("per-example loop", "fdl vmap")
                repeats = 2 if quick else (3 if slow else 5)
                t = measure_cpu(fn, warmup=1, repeats=repeats)
                note = f"path: {path}" if peer in ("fdl", "fdl norms") else ""
                results.append(result(workload, peer, t, note=note))
    return results


def measure_cpu(fn: Callable[[], Any], *, warmup: int, repeats: int) -> Timing:
    """Like ``_harness.measure`` but in process CPU seconds (robust on a shared machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return Timing(times)


def run(quick: bool = False, memory: bool = True) -> list[Result]:
    """Time every peer at batch 64 (and 256 unless ``quick``), one thread, CPU time."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    results: list[Result] = []
    for batch in (64,) if quick else (64, 256):
        workload = f"document CNN, per-sample gradients, batch {batch}"
        fns = {peer: _make(peer, batch) for peer in PEERS}
        timings = {}
        for peer, fn in fns.items():
            slow = peer in ("per-example loop", "fdl vmap", "opacus")
            repeats = 2 if quick else (3 if slow else 7)
            timings[peer] = measure_cpu(fn, warmup=1 if slow else 2, repeats=repeats)
        for peer in PEERS:
            mem = peak_mem("benchmarks.per_sample", peer, batch, timeout=600) if memory else None
            note = f"peak RSS +{mem:.0f} MB" if mem is not None else ""
            extra = {"targets": _TARGETS.get(peer, [])}
            results.append(
                result(workload, peer, timings[peer], peak_mem_mb=mem, note=note, extra=extra)
            )
    return results


def flops(quick: bool = False) -> dict[str, int]:
    """FLOPs of one ordinary batch gradient (forward and backward) per batch size: the floor
    of per-sample gradients, which need the same products, only not summed over the batch."""
    from benchmarks._flops import count_flops

    model = _torch_model()
    out = {}
    for batch in (64,) if quick else (64, 256):
        x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
        loss = lambda x=x, y=y: torch.nn.functional.nll_loss(model(x), y).backward()  # noqa: E731
        out[f"document CNN, per-sample gradients, batch {batch}"] = count_flops(loss)
    return out


def _summary(results: list[Result]) -> str:
    rows = ["| batch | target | measured | met |", "|---|---|---:|---|"]
    cnn = [r for r in results if r.workload.startswith("document CNN")]
    by = {(r.workload.rsplit(" ", 1)[-1], r.peer): r.median_s for r in cnn}
    for b in sorted({k[0] for k in by}, key=int):
        t = {peer: by[(b, peer)] for peer in PEERS if (b, peer) in by}
        checks = [
            ("fdl / batch gradient <= 1.5", t["fdl"] / t["batch gradient"], lambda v: v <= 1.5),
            ("opacus / fdl >= 2", t["opacus"] / t["fdl"], lambda v: v >= 2),
            ("loop / fdl >= 3", t["per-example loop"] / t["fdl"], lambda v: v >= 3),
            ("vmap / fdl", t["fdl vmap"] / t["fdl"], lambda v: True),
            (
                "dp step / non-private step <= 1.5",
                t["fdl dp step"] / t["non-private step"],
                lambda v: v <= 1.5,
            ),
        ]
        for name, v, ok in checks:
            rows.append(f"| {b} | {name} | {v:.2f} | {'yes' if ok(v) else 'no'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--sequences", action="store_true", help="also the sequence classifiers")
    ap.add_argument("--mem", nargs=2, metavar=("PEER", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem:
        print(json.dumps({"peak_mb": peak_mem_child(_make(args.mem[0], int(args.mem[1])))}))
    else:
        res = run(quick=args.quick, memory=not args.no_memory)
        if args.sequences:
            res += run_sequences(quick=args.quick)
        print(format_table(res))
        print(threads_note())
        print(_summary(res))
