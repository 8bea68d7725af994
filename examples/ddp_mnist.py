"""Data-parallel MNIST: the CNN of ``examples/mnist_cnn.py`` on several processes.

Run with PyTorch's own launcher, one process per core (or per GPU)::

    torchrun --nproc_per_node=2 examples/ddp_mnist.py            # 2 processes
    python examples/ddp_mnist.py                                  # the same script, alone
    torchrun --nproc_per_node=2 examples/ddp_mnist.py --epochs 1 --limit 2048 --no-compile

Every rank starts from rank 0's params (``broadcast``), draws the same epoch
permutation from the shared key and keeps its slice of every global batch
(``shard_batches``), computes gradients on its slice, and applies the same
averaged update (``make_train_step``), so the run follows the single-process
one with the same global batch. Rank 0 alone evaluates, prints and writes the
checkpoint. Threads per process default to ``cores / processes`` so that one
and two processes are compared on the same cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mnist_cnn import CNN, load_mnist  # noqa: E402

import fdl  # noqa: E402
from fdl import distributed as dist  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N train images")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--out", default="runs/ddp_mnist")
    args = parser.parse_args(argv)

    dist.init()
    world = dist.world_size()
    threads = args.threads or max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    out = Path(args.out)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)

    train, test = load_mnist(args.data_dir, args.limit)
    model = CNN()
    init_key, train_key = fdl.random.split(fdl.random.key(args.seed))
    params = dist.broadcast(model.init(init_key))
    steps_per_epoch = fdl.data.num_batches(len(train[1]), args.batch_size)
    lr = fdl.optim.schedules.CosineAnnealingLR(args.lr, T_max=args.epochs * steps_per_epoch)
    optimizer = fdl.optim.adam(lr=lr)
    opt_state = optimizer.init(params)

    def loss_fn(params: Any, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        losses = -model.apply(params, x).gather(1, y[:, None]).squeeze(1)  # (b,)
        return (losses * w).sum() / w.sum().clamp_min(1.0)

    step = dist.make_train_step(loss_fn, optimizer, weighted=True, compile=args.compile)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        total, count = 0.0, 0
        epoch_key = fdl.random.fold_in(train_key, epoch)
        for x, y, w in dist.shard_batches(
            *train, batch_size=args.batch_size, key=epoch_key, pad=True
        ):
            params, opt_state, loss = step(params, opt_state, x, y, w)
            total, count = total + float(loss), count + 1
        if dist.is_main():
            print(f"Epoch {epoch + 1}, Loss: {total / count:.4f}", flush=True)
    wall = time.perf_counter() - t0

    result: dict[str, Any] = {"world_size": world, "wall_s": wall, "threads": threads}
    if dist.is_main():
        classes = fdl.train.predict(model.apply, params, test[0], 1000, output="classes")
        accuracy = 100 * float((classes == test[1]).float().mean())
        fdl.checkpoint.save(
            out / "ddp_mnist.safetensors",
            {"params": params, "opt_state": opt_state},
            metadata={"world_size": world, "test_accuracy": f"{accuracy:.2f}"},
        )
        print(
            f"{world} process(es) x {threads} thread(s): trained in {wall:.1f}s, "
            f"test accuracy {accuracy:.2f}%; wrote {out}/ddp_mnist.safetensors",
            flush=True,
        )
        result["accuracy"] = accuracy
    dist.barrier()
    dist.shutdown()
    return result


if __name__ == "__main__":
    main()
