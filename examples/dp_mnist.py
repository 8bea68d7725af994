"""DP-SGD on MNIST with fdl: test accuracy and ε (δ = 1e-5) after every epoch.

Recipe (a small tanh CNN, as in the DP-SGD literature): Poisson batches with
sample rate 256/60000 padded to one fixed size, per-example clipping at
C = 1, noise multiplier σ = 1.0, plain SGD with lr 0.5. The privacy
accountant is :func:`fdl.privacy.epsilon` (Rényi DP of the sampled Gaussian
mechanism).

Run::

    python examples/dp_mnist.py --epochs 8 --threads 1
    python examples/dp_mnist.py --epochs 1 --limit 2000      # a quick look

Every epoch prints the train loss, test accuracy and ε, and the curve so far
is written as JSON to ``--out``. With seed 0 this reached 95.5 % test
accuracy at ε = 1.04 (epoch 3) and 97.1 % at ε = 1.27 (epoch 8), δ = 1e-5.

``--paper`` selects the setting of the Papernot et al. (2021) reproduction in
docs/privacy.md (same tanh CNN; expected batch 256, σ = 1.12, C = 1.0, 60
epochs, lr 0.5); any flag given explicitly overrides the preset::

    python examples/dp_mnist.py --paper --threads 1 --out runs/paper.json
    python examples/dp_mnist.py --paper --lr-decay cosine --threads 1   # 97.88 % at ε = 2.52
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict
from pathlib import Path

import torch

import fdl
from fdl import nn


def make_model() -> nn.Sequential:
    """conv 16@8x8/2 → tanh → pool(2, 1) → conv 32@4x4/2 → tanh → pool(2, 1) → fc 32 → fc 10."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 16, 8, stride=2, padding=3),  # (B, 16, 14, 14)
            act1=nn.Tanh(),
            pool1=nn.MaxPool2d(2, 1),  # (B, 16, 13, 13)
            conv2=nn.Conv2d(16, 32, 4, stride=2),  # (B, 32, 5, 5)
            act2=nn.Tanh(),
            pool2=nn.MaxPool2d(2, 1),  # (B, 32, 4, 4)
            flatten=nn.Flatten(),  # (B, 512)
            fc1=nn.Linear(32 * 4 * 4, 32),
            act3=nn.Tanh(),
            fc2=nn.Linear(32, 10),
        )
    )


def init_params(model: nn.Sequential, seed: int) -> tuple[torch.Tensor, dict]:
    """``(key, params)``: the initial weights for ``seed`` and the key left for training."""
    key = fdl.random.key(seed)
    key, init_key = fdl.random.split(key)
    return key, model.init(init_key)


def load_data(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    """Normalised MNIST ``(x_train, y_train, x_test, y_test)``, cut to the two limits."""
    mean, std = 0.1307, 0.3081
    x_train, y_train = fdl.data.mnist(args.data_dir, train=True)
    x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    x_test, y_test = fdl.data.mnist(args.data_dir, train=False)
    x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    x_train = fdl.data.normalize(x_train, mean, std)
    x_test = fdl.data.normalize(x_test, mean, std)
    return x_train, y_train, x_test, y_test


# The ``--paper`` preset; where each value comes from is in docs/privacy.md,
# "Reproducing Papernot et al. (2021)".
PAPER = {"epochs": 60, "batch_size": 256, "sigma": 1.12, "clip": 1.0, "lr": 0.5, "momentum": 0.0}


def parse_args(
    argv: list[str] | None = None,
    *,
    description: str = __doc__.splitlines()[0],
    out: str = "dp_mnist_results.json",
) -> argparse.Namespace:
    """The command line; ``--paper`` changes the defaults, explicit flags still win."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument(
        "--paper", action="store_true", help="the Papernot et al. (2021) setting: " + str(PAPER)
    )
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256, help="expected Poisson batch size")
    ap.add_argument("--sigma", type=float, default=1.0, help="noise multiplier")
    ap.add_argument("--clip", type=float, default=1.0, help="max per-example grad norm C")
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument(
        "--lr-decay",
        choices=("none", "cosine"),
        default="none",
        help="cosine: anneal lr to 0 over the run's steps (torch's CosineAnnealingLR)",
    )
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--data-dir", type=str, default=None, help="folder holding MNIST/raw/")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N train images")
    ap.add_argument("--test-limit", type=int, default=None, help="use only the first N test images")
    ap.add_argument(
        "--max-steps", type=int, default=None, help="stop after N steps and print the time per step"
    )
    ap.add_argument("--out", type=str, default=out, help="JSON file for the per-epoch results")
    if ap.parse_known_args(argv)[0].paper:
        ap.set_defaults(**PAPER)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    x_train, y_train, x_test, y_test = load_data(args)
    n = x_train.shape[0]
    q = args.batch_size / n
    steps_per_epoch = round(1 / q)
    max_size = fdl.privacy.poisson_max_size(n, q)

    model = make_model()
    key, params = init_params(model, args.seed)

    def loss_fn(p, x, y):
        return fdl.losses.cross_entropy(model.apply(p, x), y)

    lr = args.lr
    if args.lr_decay == "cosine":
        lr = fdl.optim.schedules.CosineAnnealingLR(args.lr, T_max=args.epochs * steps_per_epoch)
    opt = fdl.optim.sgd(lr=lr, momentum=args.momentum)
    opt_state = opt.init(params)
    step = fdl.privacy.make_dp_train_step(
        loss_fn,
        opt,
        noise_multiplier=args.sigma,
        max_grad_norm=args.clip,
        expected_batch_size=args.batch_size,
    )

    def accuracy(p) -> float:
        correct = 0
        with torch.no_grad():
            for s in range(0, x_test.shape[0], 1000):
                pred = model.apply(p, x_test[s : s + 1000]).argmax(1)
                correct += int((pred == y_test[s : s + 1000]).sum())
        return 100.0 * correct / x_test.shape[0]

    print(
        f"n={n} q={q:.5f} steps/epoch={steps_per_epoch} padded batch={max_size} "
        f"sigma={args.sigma} C={args.clip} lr={args.lr} ({args.lr_decay} decay) "
        f"momentum={args.momentum}",
        flush=True,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    total_steps = 0
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        losses: list[float] = []
        for _ in range(steps_per_epoch):
            key, k_batch, k_noise = fdl.random.split(key, 3)
            idx, mask = fdl.privacy.poisson_sample(k_batch, n, q, max_size)
            params, opt_state, loss = step(
                params, opt_state, k_noise, x_train[idx], y_train[idx], mask=mask
            )
            losses.append(float(loss))
            total_steps += 1
            if total_steps == args.max_steps:
                return _report_timing(total_steps, time.perf_counter() - t0, history)
        acc = accuracy(params)
        eps = fdl.privacy.epsilon(total_steps, args.sigma, q, args.delta)
        row = {
            "epoch": epoch,
            "steps": total_steps,
            "train_loss": sum(losses) / len(losses),
            "test_accuracy": acc,
            "epsilon": eps,
            "delta": args.delta,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        print(
            f"epoch {epoch}: loss {row['train_loss']:.4f}  test accuracy {acc:.2f}%  "
            f"epsilon {eps:.3f} (delta={args.delta})  [{row['seconds']:.0f}s]",
            flush=True,
        )
        out.write_text(json.dumps({"args": vars(args), "history": history}, indent=2))
    return history


def _report_timing(steps: int, seconds: float, history: list[dict]) -> list[dict]:
    print(f"timing: {steps} steps in {seconds:.1f}s ({1000 * seconds / steps:.0f} ms/step)")
    return history


if __name__ == "__main__":
    main()
