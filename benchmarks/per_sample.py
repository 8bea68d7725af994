"""Per-sample gradients and DP-SGD on the document's MNIST CNN and on two text classifiers.

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

Text classifiers (``benchmarks/_text.py``: Embedding → LSTM → last step → Linear, and
Embedding → TransformerEncoderLayer → mean → Linear; vocabulary 256, T = 64, d = 64),
batch 64 and 256: ``batch gradient``, ``fdl`` (``auto``; the note names the path it
took), ``fdl vmap``, ``per-example loop``, ``opacus`` (``GradSampleModule`` hooks on
``DPLSTM`` / ``DPMultiheadAttention`` holding the same weights), and the norms alone:
``fdl norms`` against ``opacus ghost norms`` (``GradSampleModuleFastGradientClipping``
with ghost clipping, ``get_norm_sample()``). Before timing, every peer's per-sample
gradients (or norms) are asserted equal to fdl's. Opacus is told the loss is a mean
(``loss_reduction="mean"``): it then scales the output gradients by ``B`` itself, so its
``grad_sample`` is each example's own gradient, as fdl's (with ``"sum"`` declared for a
mean loss it would be ``1/B`` of that).

Times are process CPU seconds with one torch thread: on a machine shared with
other jobs, wall-clock time mostly measures the other jobs. Peak memory is the
growth of the process's peak resident set while running the peer, measured
in a fresh subprocess per peer (``--mem``) under glibc's default allocator
policy (the child never calls ``fdl.allocator.keep_freed_memory()``), so that
it shows the peer's own peak.

Run::

    python -m benchmarks.per_sample            # full
    python -m benchmarks.per_sample --quick    # batch 64, fewer repeats
    python -m benchmarks.per_sample --text-only  # only the text classifiers
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
from benchmarks import _text
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


TEXT_PEERS = [
    "batch gradient",
    "fdl",
    "fdl vmap",
    "per-example loop",
    "opacus",
    "fdl norms",
    "opacus ghost norms",
]
TEXT_BATCHES = (64, 256)
# float32 against float32, different orders of the same sums (over B·T terms for the weights
# shared across the sequence): 1e-4 relative plus 1e-4 of the leaf's largest entry
TEXT_RTOL, TEXT_ATOL = 1e-4, 1e-4


def _opacus_text(kind: str, peer: str, params: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
    """Opacus on the text model: ``(call, to_fdl)``.

    Told ``loss_reduction="mean"``, Opacus multiplies the output gradients by ``B`` before
    its hooks, so its ``grad_sample`` (and ghost norms) are each example's own, as fdl's.
    """
    import warnings

    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    # the embedding's integer input needs no gradient: torch says so on every backward
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    module = _text.torch_classifier(kind, params, opacus=True)
    first = _text.batch_first(kind, opacus=True)
    if peer == "opacus":
        gsm: Any = GradSampleModule(module, batch_first=first, loss_reduction="mean")
    else:
        gsm = GradSampleModuleFastGradientClipping(
            module, batch_first=first, loss_reduction="mean", use_ghost_clipping=True
        )

    def call() -> Any:
        for p in gsm.parameters():
            p.grad_sample = None
            p.grad = None
        torch.nn.functional.cross_entropy(gsm(x), y).backward()
        if peer == "opacus":
            return {id(p): p.grad_sample for p in module.parameters()}
        return gsm.get_norm_sample()

    if peer == "opacus":
        return call, lambda out: _text.torch_names(module, out)
    return call, lambda norms: norms


def _make_text(kind: str, peer: str, batch: int) -> tuple[Callable[[], Any], Any]:
    """``(call, to_fdl)`` for ``peer`` on the ``kind`` text classifier at ``batch``.

    ``to_fdl(call())`` is the peer's per-sample gradients (by fdl's dotted names) or norms,
    as fdl defines them; ``None`` for the batch gradient (not per-sample).
    """
    x, y = _text.data(batch)
    params, loss_fn = _text.fdl_classifier(kind)
    named = lambda g: dict(fdl.nn.state_dict(g))  # noqa: E731
    if peer.startswith("opacus"):
        return _opacus_text(kind, peer, params, x, y)
    if peer == "batch gradient":
        grad = torch.func.grad(loss_fn)
        return (lambda: grad(params, x, y)), None
    if peer == "per-example loop":
        grad = torch.func.grad(loss_fn)
        loop = (
            lambda: fdl.tree.stack(  # noqa: E731
                [grad(params, x[i : i + 1], y[i : i + 1]) for i in range(batch)]
            )
        )
        return loop, named
    fn = {
        "fdl": fdl.per_sample_grads(loss_fn),
        "fdl norms": fdl.per_sample_grad_norms(loss_fn),
        "fdl vmap": fdl.per_sample_grads(loss_fn, method="vmap"),
    }[peer]
    return (lambda: fn(params, x, y)), (lambda out: out) if peer == "fdl norms" else named


def _text_method(kind: str, batch: int) -> str:
    """The path ``per_sample_grads`` takes on the ``kind`` classifier, and why."""
    params, loss_fn = _text.fdl_classifier(kind)
    plan = fdl.per_sample.per_sample_method(loss_fn)(params, *_text.data(batch))
    return plan.method + (f" ({plan.reason})" if plan.reason else "")


def check_text(kind: str, outputs: dict[str, Any]) -> None:
    """Assert every peer's converted output equals fdl's (gradients) or fdl norms' (norms).

    ``outputs`` maps a peer to ``to_fdl(call())``; peers absent or ``None`` are skipped.
    """
    close = lambda got, ref, msg: torch.testing.assert_close(  # noqa: E731
        got, ref, rtol=TEXT_RTOL, atol=TEXT_ATOL * float(ref.abs().max()), msg=msg
    )
    grads, norms = outputs["fdl"], outputs["fdl norms"]
    for peer, out in outputs.items():
        if out is None or peer in ("fdl", "fdl norms"):
            continue
        if peer.endswith("norms"):
            close(out, norms, lambda m, peer=peer: f"{kind}: {peer} vs fdl norms: {m}")
            continue
        assert set(out) == set(grads), (kind, peer, sorted(set(out) ^ set(grads)))
        for name, ref in grads.items():
            close(out[name], ref, lambda m, n=name, peer=peer: f"{kind}: {peer} {n}: {m}")
    flat = torch.cat([g.flatten(1) for g in grads.values()], 1)  # (B, P)
    close(norms, flat.norm(dim=1), lambda m: f"{kind}: fdl norms vs |fdl grads|: {m}")


def run_text(quick: bool = False) -> list[Result]:
    """Per-sample gradients and norms of the LSTM and Transformer text classifiers.

    Every peer's result is first checked against fdl's (:func:`check_text`); that call
    is also the warm-up.
    """
    torch.set_num_threads(1)
    results: list[Result] = []
    for kind in _text.KINDS:
        for batch in TEXT_BATCHES[:1] if quick else TEXT_BATCHES:
            workload = (
                f"{kind} text classifier (T={_text.SEQ}, d={_text.DIM}), "
                f"per-sample gradients, batch {batch}"
            )
            method = _text_method(kind, batch)
            peers = {peer: _make_text(kind, peer, batch) for peer in TEXT_PEERS}
            outputs = {p: (call(), conv) for p, (call, conv) in peers.items()}  # warm-up
            check_text(kind, {p: conv and conv(out) for p, (out, conv) in outputs.items()})
            for peer, (call, _) in peers.items():
                slow = peer in ("per-example loop", "fdl vmap") or peer.startswith("opacus")
                repeats = 2 if quick else (3 if slow else 5)
                t = measure_cpu(call, warmup=0, repeats=repeats)
                note = f"path: {method}" if peer in ("fdl", "fdl norms") else ""
                if peer.endswith("norms"):
                    note = "; ".join(filter(None, ["norms only", note]))
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


def run(quick: bool = False, memory: bool = True, text: bool = True) -> list[Result]:
    """Time every peer at batch 64 (and 256 unless ``quick``), one thread, CPU time.

    ``text``: also the text classifiers (:func:`run_text`).
    """
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
    return results + (run_text(quick) if text else [])


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
    ap.add_argument("--text-only", action="store_true", help="only the text classifiers")
    ap.add_argument("--mem", nargs=2, metavar=("PEER", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem:
        print(json.dumps({"peak_mb": peak_mem_child(_make(args.mem[0], int(args.mem[1])))}))
    else:
        if args.text_only:
            res = run_text(quick=args.quick)
        else:
            res = run(quick=args.quick, memory=not args.no_memory)
        print(format_table(res))
        print(threads_note())
        if not args.text_only:
            print(_summary(res))
