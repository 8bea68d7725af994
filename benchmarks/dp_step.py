"""The DP-SGD training step against Opacus (hooks and ghost clipping), batch 64 to 1024.

Workloads: the document's MNIST CNN (``benchmarks/per_sample.py``'s model) on random
images, and the Transformer text classifier of ``benchmarks/_text.py`` (Embedding →
TransformerEncoderLayer → mean → Linear; vocabulary 256, T = 64, d = 64) on random
tokens: one full training step with Adam (lr 1e-3): forward, per-example clipping at
``C = 1``, Gaussian noise with ``σ = 1``, update. Peers:

* ``fdl dp step``: ``fdl.privacy.make_dp_train_step`` (eager: the per-layer rules
  path; per-example norms and the clipped weighted sum from the layer's own factors,
  without per-example gradients of the linear layers).
* ``fdl dp step compiled`` (text model only): the same step with ``method="rules",
  compile=True`` (the traced rules under inductor); its first call (trace and compile)
  is the compile column, and its targets are those of the eager step, labelled
  "(compiled)".
* ``opacus hooks``: ``PrivacyEngine.make_private(..., grad_sample_mode="hooks")``.
* ``opacus ghost``: ``make_private(..., grad_sample_mode="ghost")`` (fast gradient
  clipping, the criterion wrapped by Opacus: two backward passes).
* ``non-private fdl``: ``fdl.train.make_train_step`` (eager).
* ``non-private torch``: ``nn.Module`` + ``torch.optim.Adam`` (for the text model
  torch's own ``TransformerEncoderLayer``; Opacus gets ``DPMultiheadAttention`` with the
  same weights, run sequence-first, see ``benchmarks/_text.py``).

Times are process CPU seconds with one torch thread (as in ``per_sample``); peak
memory is the growth of a fresh subprocess's peak resident set over two steps,
under glibc's default allocator policy.

Run: ``python -m benchmarks.dp_step`` (``--quick``: batch 64 only; ``--model text``:
one model only).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch

import fdl
from benchmarks import _text
from benchmarks._harness import (
    Result,
    format_table,
    peak_mem,
    peak_mem_child,
    result,
    threads_note,
    time_first_call,
)
from benchmarks.per_sample import _fdl_model, _torch_model, measure_cpu

PEERS = [
    "fdl dp step",
    "opacus hooks",
    "opacus ghost",
    "non-private fdl",
    "non-private torch",
]
COMPILED = "fdl dp step compiled"
TEXT_PEERS = [*PEERS[:1], COMPILED, *PEERS[1:]]
SIGMA, CLIP = 1.0, 1.0

_TARGETS = {
    "fdl dp step": [
        {"text": "≤ 1.3× the non-private fdl step", "vs": "non-private fdl", "max_ratio": 1.3},
        {"text": "≥ 1.5× faster than Opacus ghost", "vs": "opacus ghost", "max_ratio": 1 / 1.5},
    ],
}
_TARGETS[COMPILED] = [{**t, "text": f"(compiled) {t['text']}"} for t in _TARGETS["fdl dp step"]]


MODELS = ("cnn", "text")
TEXT_KIND = "transformer"


def _workload(model: str, batch: int) -> str:
    if model == "cnn":
        return f"document CNN, DP-SGD train step, batch {batch}"
    return (
        f"{TEXT_KIND} text classifier (T={_text.SEQ}, d={_text.DIM}), DP-SGD train step, "
        f"batch {batch}"
    )


def _models(model: str) -> tuple[Any, Any, Callable[[bool], torch.nn.Module], torch.nn.Module]:
    """``(params, loss_fn, torch_module(opacus), criterion)`` of ``model``, fdl and torch."""
    if model == "cnn":
        net = _fdl_model()

        def loss_fn(p: Any, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            return fdl.losses.nll_loss(net.apply(p, xb), yb)

        params = net.init(fdl.random.key(0))
        return params, loss_fn, lambda opacus: _torch_model(), torch.nn.NLLLoss()
    if model != "text":
        raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")
    params, loss_fn = _text.fdl_classifier(TEXT_KIND)
    build = lambda opacus: _text.torch_classifier(TEXT_KIND, params, opacus=opacus)  # noqa: E731
    return params, loss_fn, build, torch.nn.CrossEntropyLoss()


def _data(model: str, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    if model == "text":
        return _text.data(batch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    return x, torch.randint(0, 10, (batch,), generator=g)


def _opacus(model: str, x: torch.Tensor, y: torch.Tensor, mode: str) -> Callable[[], Any]:
    import warnings

    from opacus import PrivacyEngine

    warnings.filterwarnings("ignore", module="opacus")
    _, _, build, criterion = _models(model)
    net = build(True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=x.shape[0]
    )
    engine = PrivacyEngine(accountant="rdp")
    made = engine.make_private(
        module=net,
        optimizer=opt,
        data_loader=loader,
        criterion=criterion,
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        poisson_sampling=False,
        grad_sample_mode=mode,
        batch_first=model == "cnn" or _text.batch_first(TEXT_KIND, opacus=True),
    )
    if mode == "ghost":
        module, dp_opt, criterion, _ = made
    else:
        module, dp_opt, _ = made

    def step() -> None:
        dp_opt.zero_grad()
        loss = criterion(module(x), y)
        loss.backward()
        dp_opt.step()

    return step


def _make(peer: str, batch: int, model: str = "cnn") -> Callable[[], Any]:
    """The zero-argument step timed for ``peer`` at ``batch`` on ``model`` ("cnn", "text")."""
    x, y = _data(model, batch)
    if peer.startswith("opacus"):
        return _opacus(model, x, y, peer.split()[1])
    params, loss_fn, build, criterion = _models(model)
    if peer == "non-private torch":
        net = build(False)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def torch_step() -> None:
            opt.zero_grad()
            criterion(net(x), y).backward()
            opt.step()

        return torch_step
    opt = fdl.optim.adam(lr=1e-3)
    carry = {"params": params, "state": opt.init(params)}
    if peer == "non-private fdl":
        step = fdl.train.make_train_step(loss_fn, opt, compile=False)

        def fdl_step() -> None:
            carry["params"], carry["state"], _ = step(carry["params"], carry["state"], x, y)

        return fdl_step
    if peer not in ("fdl dp step", COMPILED):
        raise ValueError(f"unknown peer {peer!r}; expected one of {TEXT_PEERS}")
    compiled = dict(method="rules", compile=True) if peer == COMPILED else {}
    dp = fdl.privacy.make_dp_train_step(
        loss_fn,
        opt,
        noise_multiplier=SIGMA,
        max_grad_norm=CLIP,
        expected_batch_size=batch,
        **compiled,  # type: ignore[arg-type]
    )
    keys = {"key": fdl.random.key(1)}
    mask = torch.ones(batch, dtype=torch.bool)

    def dp_step() -> None:
        keys["key"], sub = fdl.random.split(keys["key"])
        carry["params"], carry["state"], _ = dp(
            carry["params"], carry["state"], sub, x, y, mask=mask
        )

    return dp_step


def run(quick: bool = False, memory: bool = True, models: tuple[str, ...] = MODELS) -> list[Result]:
    """Time every peer at batch 64, 256 and 1024 (64 only if ``quick``), one thread, CPU time."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    results: list[Result] = []
    for model in models:
        for batch in (64,) if quick else (64, 256, 1024):
            workload = _workload(model, batch)
            peers = TEXT_PEERS if model == "text" else PEERS
            fns = {peer: _make(peer, batch, model) for peer in peers}
            compile_s = {p: time_first_call(fn) for p, fn in fns.items() if p == COMPILED}
            repeats = 2 if quick else (3 if batch >= 1024 else 5)
            timings = {p: measure_cpu(fn, warmup=2, repeats=repeats) for p, fn in fns.items()}
            for peer in peers:
                mem = None
                if memory:
                    mem = peak_mem("benchmarks.dp_step", peer, batch, args=("--model", model))
                note = f"peak RSS +{mem:.0f} MB" if mem is not None else ""
                extra = {"targets": _TARGETS.get(peer, [])}
                comp = compile_s.get(peer)
                results.append(
                    result(
                        workload,
                        peer,
                        timings[peer],
                        compile_s=comp,
                        peak_mem_mb=mem,
                        note=note,
                        extra=extra,
                    )
                )
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--model", action="append", choices=MODELS, help="only this model")
    ap.add_argument("--mem", nargs=2, metavar=("PEER", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem:
        step = _make(args.mem[0], int(args.mem[1]), (args.model or ["cnn"])[0])
        print(json.dumps({"peak_mb": peak_mem_child(step)}))
    else:
        res = run(quick=args.quick, memory=not args.no_memory, models=tuple(args.model or MODELS))
        print(format_table(res, baseline_peer="fdl dp step"))
        print(threads_note())
