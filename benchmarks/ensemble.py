"""K = 5 models trained as one vmapped compiled step vs 5 sequential compiled steps.

Both peers do the same work per iteration: one Adam step for each of K small
MLPs, each on its own batch. ``fdl`` is :func:`fdl.ensemble.make_ensemble_train_step`
(one ``torch.compile``d call of ``vmap(train_step)``); ``fdl sequential ×K``
calls one compiled :func:`fdl.train.make_train_step` K times, once per model
(the shapes agree, so it compiles once). Target: the ensemble ≥ 2× faster.

Run: ``python -m benchmarks.ensemble`` (``--quick`` for fewer repeats).
"""

from __future__ import annotations

import sys

import torch

import fdl
import fdl.ensemble
import fdl.losses
import fdl.optim
from benchmarks._flops import count_flops
from benchmarks._harness import (
    Result,
    Timing,
    format_table,
    measure,
    result,
    threads_note,
    time_first_call,
)
from fdl.train import make_train_step

K = 5
# (workload name, input features, hidden units, classes, batch size per model)
WORKLOADS = [
    ("ensemble K=5: MLP 64-64-10, batch 32", 64, 64, 10, 32),
    ("ensemble K=5: MLP 784-128-10, batch 64", 784, 128, 10, 64),
]


def _init(key: torch.Tensor, d_in: int, d_hidden: int, d_out: int) -> dict:
    k1, k2 = fdl.random.split(key)
    return {
        "w1": fdl.random.normal(k1, (d_hidden, d_in), std=d_in**-0.5),
        "b1": torch.zeros(d_hidden),
        "w2": fdl.random.normal(k2, (d_out, d_hidden), std=d_hidden**-0.5),
        "b2": torch.zeros(d_out),
    }


def _loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = torch.relu(x @ params["w1"].T + params["b1"])  # (B, hidden)
    return fdl.losses.cross_entropy(h @ params["w2"].T + params["b2"], y)


def _batches(d_in: int, d_out: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(K, batch, d_in, generator=g)  # one batch per model
    y = torch.randint(0, d_out, (K, batch), generator=g)
    return x, y


def _workload(name: str, d_in: int, d_hidden: int, d_out: int, batch: int, quick: bool):
    opt = fdl.optim.adam(lr=1e-3)
    members = [_init(k, d_in, d_hidden, d_out) for k in fdl.random.split(fdl.random.key(0), K)]
    x, y = _batches(d_in, d_out, batch)

    ens_step = fdl.ensemble.make_ensemble_train_step(_loss, opt)
    ens = {"p": fdl.tree.stack(members)}
    ens["s"] = fdl.ensemble.init_optimizer(opt, ens["p"])

    def ensemble_iter() -> None:
        ens["p"], ens["s"], _ = ens_step(ens["p"], ens["s"], x, y)

    seq_step = make_train_step(_loss, opt)
    seq = [[p, opt.init(p)] for p in members]

    def sequential_iter() -> None:
        for k, ps in enumerate(seq):
            ps[0], ps[1], _ = seq_step(ps[0], ps[1], x[k], y[k])

    ens_compile = time_first_call(ensemble_iter)
    seq_compile = time_first_call(sequential_iter)
    warmup, repeats, number = (3, 5, 10) if quick else (10, 11, 20)
    measure(ensemble_iter, warmup=warmup, repeats=0)
    measure(sequential_iter, warmup=warmup, repeats=0)
    # interleave the two peers' repeats so machine-load drift hits both alike
    ens_times, seq_times = [], []
    for _ in range(repeats):
        ens_times += measure(ensemble_iter, warmup=0, repeats=1, number=number).times
        seq_times += measure(sequential_iter, warmup=0, repeats=1, number=number).times
    target = {"text": "≥ 2× faster than 5 sequential steps", "vs": f"fdl sequential ×{K}"}
    return [
        result(
            name,
            "fdl",
            Timing(ens_times),
            compile_s=ens_compile,
            note=f"one vmapped compiled step for {K} models",
            extra={"targets": [{**target, "max_ratio": 0.5}]},
        ),
        result(
            name,
            f"fdl sequential ×{K}",
            Timing(seq_times),
            compile_s=seq_compile,
            note=f"{K} calls of one compiled step",
        ),
    ]


def run(quick: bool = False) -> list[Result]:
    """Both workloads; each result's time is one iteration (one step of all K models)."""
    out: list[Result] = []
    for w in WORKLOADS[:1] if quick else WORKLOADS:
        out += _workload(*w, quick=quick)
    return out


def flops(quick: bool = False) -> dict[str, int]:
    """Matmul FLOPs of one iteration (K models, forward and backward)."""
    out = {}
    for name, d_in, d_hidden, d_out, batch in WORKLOADS[:1] if quick else WORKLOADS:
        p = _init(fdl.random.key(0), d_in, d_hidden, d_out)
        p = {k: v.requires_grad_(True) for k, v in p.items()}
        x, y = _batches(d_in, d_out, batch)
        out[name] = K * count_flops(lambda p=p, x=x, y=y: _loss(p, x[0], y[0]).backward())
    return out


if __name__ == "__main__":
    results = run(quick="--quick" in sys.argv)
    print(format_table(results))
    print(threads_note())
    for r in results:
        if r.peer == "fdl":
            seq = next(s for s in results if s.workload == r.workload and s.peer != "fdl")
            print(f"{r.workload}: ensemble speed-up {seq.median_s / r.median_s:.2f}×")
