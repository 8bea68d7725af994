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


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256, help="expected Poisson batch size")
    ap.add_argument("--sigma", type=float, default=1.0, help="noise multiplier")
    ap.add_argument("--clip", type=float, default=1.0, help="max per-example grad norm C")
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--data-dir", type=str, default=None, help="folder holding MNIST/raw/")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N train images")
    ap.add_argument("--out", type=str, default="dp_mnist_results.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    mean, std = 0.1307, 0.3081
    x_train, y_train = fdl.data.mnist(args.data_dir, train=True)
    x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    x_test, y_test = fdl.data.mnist(args.data_dir, train=False)
    x_train = fdl.data.normalize(x_train, mean, std)
    x_test = fdl.data.normalize(x_test, mean, std)
    n = x_train.shape[0]
    q = args.batch_size / n
    steps_per_epoch = round(1 / q)
    max_size = fdl.privacy.poisson_max_size(n, q)

    model = make_model()
    key = fdl.random.key(args.seed)
    key, init_key = fdl.random.split(key)
    params = model.init(init_key)

    def loss_fn(p, x, y):
        return fdl.losses.cross_entropy(model.apply(p, x), y)

    opt = fdl.optim.sgd(lr=args.lr, momentum=args.momentum)
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
        f"sigma={args.sigma} C={args.clip} lr={args.lr} momentum={args.momentum}",
        flush=True,
    )
    history = []
    total_steps = 0
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        losses = []
        for _ in range(steps_per_epoch):
            key, k_batch, k_noise = fdl.random.split(key, 3)
            idx, mask = fdl.privacy.poisson_sample(k_batch, n, q, max_size)
            params, opt_state, loss = step(
                params, opt_state, k_noise, x_train[idx], y_train[idx], mask=mask
            )
            losses.append(float(loss))
            total_steps += 1
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
        Path(args.out).write_text(json.dumps({"args": vars(args), "history": history}, indent=2))
    return history


if __name__ == "__main__":
    main()
