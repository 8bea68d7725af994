"""Adversarial robustness on MNIST: standard vs PGD adversarial training (Madry et al., 2018).

The CNN of ``examples/mnist_cnn.py`` is trained twice from the same init:

* **standard**: on clean images;
* **adversarial**: on L-inf PGD examples made afresh for every batch against the
  current params (``eps = 0.3``, ``alpha = 0.01``, 40 steps, random start:
  Madry et al.'s MNIST setting), ``min_theta E[max_{||d|| <= eps} CE(f(x + d), y)]``.
  The training eps ramps linearly from 0 to its value over ``--warmup-epochs``
  (default 1; Madry et al. train at full eps from the start for ~80 epochs,
  which a short run does not survive: without the ramp the net can stall at chance).

Both are then evaluated on the test set, clean and under FGSM and PGD
(``--eval-steps`` steps of ``alpha = 2.5 eps / steps``, random start) at
eps = 0.1, 0.2, 0.3. Inputs live in ``[0, 1]``: the model normalizes inside
(``(x - 0.5) / 0.5``, as the original example does), so attacks and clamps act
on pixels. Everything is a pure function: PGD is ``fdl.robust.pgd`` inside the
compiled train step, eps is a tensor (the ramp and the three eval budgets never
recompile), and every random start comes from a key.

Run::

    python examples/adversarial_mnist.py                      # full run (long on CPU)
    python examples/adversarial_mnist.py --limit 2000 --test-limit 500 --epochs 1 \\
        --adv-steps 5 --eval-steps 10                         # quick mode

Writes to ``--out``: ``results.json``, ``results.md`` (the accuracy table) and
``adversarial_grid.png`` (clean vs PGD images with both models' predictions).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import fdl

EPS_GRID = (0.1, 0.2, 0.3)


def _cnn_class() -> Any:
    """The CNN of examples/mnist_cnn.py (loaded by path: examples/ is not a package)."""
    path = Path(__file__).resolve().parent / "mnist_cnn.py"
    spec = importlib.util.spec_from_file_location("_mnist_cnn_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.CNN


def make_forward(model: Any) -> Any:
    """``forward(params, x)``: log-probabilities of pixels ``x`` in ``[0, 1]``."""

    def forward(params: Any, x: torch.Tensor) -> torch.Tensor:
        return model.apply(params, fdl.data.normalize(x, 0.5, 0.5))

    return forward


def make_step(forward: Any, optimizer: Any, args: argparse.Namespace, adversarial: bool) -> Any:
    """``step(params, opt_state, x, y, w, eps, key) -> (params, opt_state, loss)``."""

    def loss_fn(params: Any, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        losses = fdl.losses.nll_loss(forward(params, x), y, reduction="none")
        return (losses * w).sum() / w.sum()

    train_step = fdl.train.make_train_step(loss_fn, optimizer, compile=False)

    def step(params, opt_state, x, y, w, eps, key):  # type: ignore[no-untyped-def]
        if adversarial:  # the inner maximisation, at the incoming params
            x = fdl.robust.pgd(
                lambda v: forward(params, v),
                x,
                y,
                eps=eps,
                alpha=torch.as_tensor(args.adv_alpha),
                steps=args.adv_steps,
                key=key,
            )
        return train_step(params, opt_state, x, y, w)

    return torch.compile(step, fullgraph=True) if args.compile else step


def train(
    name: str, forward: Any, params: Any, data: Any, args: argparse.Namespace, adversarial: bool
) -> tuple[Any, list[dict[str, Any]]]:
    x, y = data
    optimizer = fdl.optim.adam(lr=args.lr)
    opt_state = optimizer.init(params)
    step = make_step(forward, optimizer, args, adversarial)
    steps_per_epoch = fdl.data.num_batches(len(y), args.batch_size)
    warmup = max(1, args.warmup_epochs * steps_per_epoch) if args.warmup_epochs > 0 else 0
    key = fdl.random.key(args.seed + 1)
    history, k = [], 0
    for epoch in range(args.epochs):
        k_order, k_attack = fdl.random.split(fdl.random.fold_in(key, epoch))
        attack_keys = fdl.random.split(k_attack, steps_per_epoch)
        t0, total, count = time.perf_counter(), 0.0, 0
        batches = fdl.data.batches(x, y, batch_size=args.batch_size, key=k_order, pad=True)
        for i, (xb, yb, wb) in enumerate(batches):
            ramp = min(1.0, (k + 1) / warmup) if warmup else 1.0
            eps = torch.tensor(args.train_eps * ramp)
            params, opt_state, loss = step(params, opt_state, xb, yb, wb, eps, attack_keys[i])
            total, count, k = total + float(loss) * float(wb.sum()), count + float(wb.sum()), k + 1
        record = {
            "epoch": epoch + 1,
            "train_loss": total / count,
            "time_s": time.perf_counter() - t0,
        }
        history.append(record)
        print(
            f"[{name}] epoch {epoch + 1}: loss {record['train_loss']:.4f} "
            f"({record['time_s']:.1f}s)",
            flush=True,
        )
    return params, history


def make_attacks(forward: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``attack(params, x, y, eps, key) -> x_adv`` for FGSM and PGD, compiled once each."""

    def fgsm(params, x, y, eps, key):  # type: ignore[no-untyped-def]
        return fdl.robust.fgsm(lambda v: forward(params, v), x, y, eps=eps)

    def pgd(params, x, y, eps, key):  # type: ignore[no-untyped-def]
        alpha = 2.5 * eps / args.eval_steps
        return fdl.robust.pgd(
            lambda v: forward(params, v), x, y, eps=eps, alpha=alpha, steps=args.eval_steps, key=key
        )

    attacks = {"FGSM": fgsm, "PGD": pgd}
    if args.compile:
        attacks = {k: torch.compile(v, fullgraph=True) for k, v in attacks.items()}
    return attacks


def evaluate(
    forward: Any, params: Any, data: Any, attacks: dict[str, Any], args: argparse.Namespace
) -> dict[str, float]:
    """Accuracy (%) clean and under every attack at every eps."""
    x, y = data
    key = fdl.random.key(args.seed + 2)
    correct: dict[str, int] = {"clean": 0}
    for i, (xb, yb) in enumerate(fdl.data.batches(x, y, batch_size=args.eval_batch_size)):
        with torch.no_grad():
            correct["clean"] += int((forward(params, xb).argmax(1) == yb).sum())
        for name, attack in attacks.items():
            for eps in EPS_GRID:
                adv = attack(params, xb, yb, torch.tensor(eps), fdl.random.fold_in(key, i))
                with torch.no_grad():
                    hits = int((forward(params, adv).argmax(1) == yb).sum())
                correct[f"{name} {eps}"] = correct.get(f"{name} {eps}", 0) + hits
    return {k: 100.0 * v / len(y) for k, v in correct.items()}


def table(results: dict[str, dict[str, float]]) -> str:
    """The markdown accuracy table, one row per training, one column per attack and eps."""
    cols = ["clean"] + [f"{a} {e}" for a in ("FGSM", "PGD") for e in EPS_GRID]
    head = "| training | " + " | ".join(c.replace(" ", " ε=") for c in cols) + " |"
    rule = "|" + "---|" * (len(cols) + 1)
    rows = [
        f"| {name} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |"
        for name, r in results.items()
    ]
    return "\n".join([head, rule, *rows])


def save_grid(forward: Any, models: dict[str, Any], data: Any, attacks: Any, path: Path) -> None:
    """Clean and PGD (eps = 0.3) digits with each model's predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = data[0][:10], data[1][:10]
    rows = []
    for name, params in models.items():
        adv = attacks["PGD"](params, x, y, torch.tensor(0.3), fdl.random.key(123))
        for kind, images in (("clean", x), ("PGD ε=0.3", adv)):
            with torch.no_grad():
                pred = forward(params, images).argmax(1)
            rows.append((f"{name}\n{kind}", images, pred))
    fig, axes = plt.subplots(len(rows), 10, figsize=(12, 1.45 * len(rows)))
    for r, (label, images, pred) in enumerate(rows):
        for c in range(10):
            ax = axes[r, c]
            ax.imshow(images[c, 0].detach().numpy(), cmap="gray", vmin=0, vmax=1)
            ok = int(pred[c]) == int(y[c])
            ax.set_title(f"pred {int(pred[c])}", fontsize=8, color="green" if ok else "red")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle("labels: " + " ".join(str(int(v)) for v in y), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-eps", type=float, default=0.3)
    parser.add_argument("--adv-alpha", type=float, default=0.01)
    parser.add_argument("--adv-steps", type=int, default=40)
    parser.add_argument("--warmup-epochs", type=float, default=1.0, help="linear eps ramp")
    parser.add_argument("--eval-steps", type=int, default=40)
    parser.add_argument("--eval-batch-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--data-dir", default=None, help="folder holding MNIST/raw (or FDL_DATA_DIR)"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N training images")
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images")
    parser.add_argument("--out", default="runs/adversarial_mnist")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_data = fdl.data.mnist(args.data_dir, train=True)
    test_data = fdl.data.mnist(args.data_dir, train=False)
    if args.limit is not None:
        train_data = (train_data[0][: args.limit], train_data[1][: args.limit])
    if args.test_limit is not None:
        test_data = (test_data[0][: args.test_limit], test_data[1][: args.test_limit])

    model = _cnn_class()()
    forward = make_forward(model)
    init = model.init(fdl.random.key(args.seed))
    attacks = make_attacks(forward, args)
    t0 = time.perf_counter()
    models, histories, results = {}, {}, {}
    for name, adversarial in (("standard", False), ("PGD adversarial", True)):
        params, histories[name] = train(name, forward, init, train_data, args, adversarial)
        models[name] = params
        results[name] = evaluate(forward, params, test_data, attacks, args)
        print(
            f"[{name}] " + ", ".join(f"{k}: {v:.2f}%" for k, v in results[name].items()), flush=True
        )
    wall = time.perf_counter() - t0

    md = table(results)
    print(md)
    command = "python examples/adversarial_mnist.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    (out / "results.md").write_text(f"{md}\n\nCommand: `{command.strip()}`\n")
    (out / "results.json").write_text(
        json.dumps(
            {"args": vars(args), "accuracy": results, "history": histories, "wall_s": wall},
            indent=2,
        )
    )
    save_grid(forward, models, test_data, attacks, out / "adversarial_grid.png")
    print(f"Done in {wall:.1f}s; wrote {out}/results.md, results.json, adversarial_grid.png")
    return {"accuracy": results, "wall_s": wall}


if __name__ == "__main__":
    main()
