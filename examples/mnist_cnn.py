"""Train the MNIST CNN with fdl: a pure model, a pure optimizer, one compiled step.

The network of ``examples/mnist_cnn_torch.py``, written as an fdl layer::

    conv1 (1->32, 3x3, pad 1) -> relu -> max_pool 2x2     28x28 -> 14x14
    conv2 (32->64, 3x3, pad 1) -> relu -> max_pool 2x2    14x14 -> 7x7
    flatten (64*7*7 = 3136) -> fc1 (128) -> relu -> fc2 (10) -> log_softmax

A 2x2 max-pool follows *each* convolution; with a single pool the first
linear layer would receive 64*14*14 = 12544 features instead of 3136.

Loss: the model returns log-probabilities, so the loss is ``nll_loss``
(``-mean(log p[y])``). The torch reference feeds the same log-probabilities
to ``CrossEntropyLoss``, which applies log_softmax a second time; as
``log_softmax(log p) = log p`` that is a redundant pass, not a different loss.
The pairings are log_softmax with nll_loss, or raw logits with cross_entropy.

Data: MNIST scaled to [0, 1] then ``normalize(x, 0.5, 0.5)``; batch 64,
shuffled from the seed every epoch; Adam with lr 1e-3.

Learning rate: the torch reference keeps lr 1e-3 for 10 epochs. Trained for
only 3 epochs at a constant 1e-3 this network ends near 98.9% test accuracy;
by default the example starts at the same 1e-3 and anneals it to 0 along a
cosine over the run (``lr_k = 1e-3 * (1 + cos(pi k / K)) / 2`` at step ``k`` of
``K``), which reaches 99%+ in 3 epochs. ``--schedule constant`` keeps the
reference's constant rate. The rate is a function of the optimizer's step
count tensor, so the compiled step never recompiles as it changes.

Run::

    python examples/mnist_cnn.py                 # 3 epochs, compiled step
    python examples/mnist_cnn.py --epochs 1 --limit 2000 --no-compile   # a quick look

Prints ``Epoch {n}, Loss: {mean training loss}`` per epoch and the test
accuracy, and writes to ``--out``: ``history.json`` (after every epoch),
``checkpoint.safetensors`` (params, optimizer state, key, epoch; written as
soon as training ends, before any report or plot, so a failure in those loses
nothing trained) and ``training_curve.png`` (only with matplotlib, from
``pip install "fdl[plot]"``; without it the plot is skipped with a notice).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

import fdl
import fdl.nn.functional as F
from fdl import nn


class CNN(nn.Layer):
    """The MNIST CNN: ``apply(params, x)`` maps ``(N, 1, 28, 28)`` to log-probabilities ``(N, 10)``.

    Parameter names match ``examples/mnist_cnn_torch.CNN().state_dict()``
    (``conv1.weight``, ..., ``fc2.bias``), so torch weights load as they are.
    """

    def __init__(self) -> None:
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def init(self, key: torch.Tensor) -> dict[str, Any]:
        k1, k2, k3, k4 = fdl.random.split(key, 4)
        return {
            "conv1": self.conv1.init(k1),
            "conv2": self.conv2.init(k2),
            "fc1": self.fc1.init(k3),
            "fc2": self.fc2.init(k4),
        }

    def apply(
        self,
        params: dict[str, Any],
        x: torch.Tensor,
        *,
        key: torch.Tensor | None = None,
        train: bool = False,
    ) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1.apply(params["conv1"], x)), 2)  # (N, 32, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2.apply(params["conv2"], x)), 2)  # (N, 64, 7, 7)
        x = x.flatten(1)  # (N, 3136)
        x = F.relu(self.fc1.apply(params["fc1"], x))  # (N, 128)
        return F.log_softmax(self.fc2.apply(params["fc2"], x), dim=1)  # (N, 10)


def load_mnist(
    data_dir: str | None, limit: int | None = None, test_limit: int | None = None
) -> tuple[Any, Any]:
    """Train and test splits as tensors, normalized with mean 0.5 and std 0.5."""
    splits = []
    for train, n in ((True, limit), (False, test_limit)):
        x, y = fdl.data.mnist(data_dir, train=train)
        x, y = x[:n], y[:n]
        splits.append((fdl.data.normalize(x, 0.5, 0.5), y))
    return splits[0], splits[1]


def pyplot(what: str) -> Any:
    """``matplotlib.pyplot`` (file-only Agg backend), or None after a one-line notice.

    matplotlib is not a dependency of fdl: ``pip install "fdl[plot]"`` adds it.
    """
    try:
        import matplotlib
    except ImportError:
        print(f'skipped {what}: matplotlib is not installed (pip install "fdl[plot]")', flush=True)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_curve(history: list[dict[str, Any]], path: Path) -> bool:
    """Plot training/validation loss and accuracy per epoch to a PNG; False if skipped."""
    plt = pyplot("the training curve")
    if plt is None:
        return False
    import matplotlib.ticker

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="nll loss", title="loss")
    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in history], "o-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="learning-rate schedule",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.compile the step",
    )
    parser.add_argument(
        "--data-dir", default=None, help="folder holding MNIST/raw (or FDL_DATA_DIR)"
    )
    parser.add_argument("--limit", type=int, default=None, help="use only the first N train images")
    parser.add_argument(
        "--test-limit", type=int, default=None, help="use only the first N test images"
    )
    parser.add_argument("--out", default="runs/mnist_cnn", help="folder for checkpoint and plots")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_mnist(args.data_dir, args.limit, args.test_limit)

    model = CNN()
    key = fdl.random.key(args.seed)
    init_key, train_key = fdl.random.split(key)
    params = model.init(init_key)
    lr: Any = args.lr
    if args.schedule == "cosine":
        total_steps = args.epochs * fdl.data.num_batches(len(train[1]), args.batch_size)
        lr = fdl.optim.schedules.CosineAnnealingLR(args.lr, T_max=total_steps)
    optimizer = fdl.optim.adam(lr=lr)

    def report(record: dict[str, Any]) -> None:
        print(f"Epoch {record['epoch']}, Loss: {record['train_loss']}", flush=True)

    t0 = time.perf_counter()
    params, opt_state, history = fdl.train.fit(
        model.apply,
        fdl.losses.nll_loss,
        optimizer,
        params,
        train,
        key=train_key,
        epochs=args.epochs,
        batch_size=args.batch_size,
        val_data=test,  # a per-epoch curve only: nothing is selected on it
        compile=args.compile,
        progress=not args.no_progress,
        history_path=out / "history.json",
        callback=report,
    )
    wall = time.perf_counter() - t0

    # save what was trained first: nothing after this line can lose it
    checkpoint = out / "checkpoint.safetensors"
    fdl.checkpoint.save(
        checkpoint,
        {"params": params, "opt_state": opt_state, "key": key, "epoch": torch.tensor(args.epochs)},
        metadata={"example": "mnist_cnn", "epochs": str(args.epochs)},
    )
    print(f"Trained in {wall:.1f}s; wrote {checkpoint} and {out}/history.json", flush=True)

    # every test image counts: the last partial batch is padded, not dropped
    classes = fdl.train.predict(model.apply, params, test[0], 1000, output="classes")
    correct, total = int((classes == test[1]).sum()), len(test[1])
    accuracy = 100 * correct / total
    print(f"Accuracy of the network on the {total} test images: {accuracy}%")

    if save_curve(history, out / "training_curve.png"):
        print(f"wrote {out}/training_curve.png")
    return {"accuracy": accuracy, "wall_s": wall, "history": history, "checkpoint": checkpoint}


if __name__ == "__main__":
    main()
