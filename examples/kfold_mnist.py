"""5-fold cross-validation on a 10,000-image MNIST subset, trained as ONE vmapped ensemble.

The five fold models are stacked into one parameter tree and trained together
by a single compiled step (``fdl.ensemble.make_ensemble_train_step``): model
``k`` trains on every fold but ``k``, sees its own shuffled batches, and is
validated on fold ``k``. Then the five models, used as an ensemble that
averages their probabilities, classify the 10,000 MNIST test images (none
dropped), and a confusion-matrix PNG is written.

Run::

    python examples/kfold_mnist.py                    # MLP, 5 epochs
    python examples/kfold_mnist.py --model cnn        # the document's CNN (fixed), slower
    python examples/kfold_mnist.py --epochs 1 --subset 2000   # a quick look

MNIST is read from ``--data`` / ``FDL_DATA_DIR`` / ``./data`` (see ``fdl.data.mnist``).
The confusion matrix is printed; its PNG needs matplotlib (``pip install
"fdl[plot]"``) and is skipped with a notice without it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import fdl
import fdl.data
import fdl.ensemble
import fdl.losses
import fdl.metrics
import fdl.nn
import fdl.optim


def make_model(name: str) -> fdl.nn.Layer:
    if name == "mlp":
        return fdl.nn.Sequential(
            fdl.nn.Flatten(), fdl.nn.Linear(784, 128), fdl.nn.ReLU(), fdl.nn.Linear(128, 10)
        )
    # the document's CNN with its intended pooling: 28 -> 14 -> 7, so fc1 sees 64 * 7 * 7
    return fdl.nn.Sequential(
        fdl.nn.Conv2d(1, 32, 3, stride=1, padding=1),
        fdl.nn.ReLU(),
        fdl.nn.MaxPool2d(2),
        fdl.nn.Conv2d(32, 64, 3, stride=1, padding=1),
        fdl.nn.ReLU(),
        fdl.nn.MaxPool2d(2),
        fdl.nn.Flatten(),
        fdl.nn.Linear(64 * 7 * 7, 128),
        fdl.nn.ReLU(),
        fdl.nn.Linear(128, 10),
    )


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


def save_confusion_png(matrix: torch.Tensor, path: Path, title: str) -> bool:
    """The confusion matrix as a PNG; False if skipped (no matplotlib)."""
    plt = pyplot("the confusion-matrix PNG")
    if plt is None:
        return False
    m = matrix.numpy()
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set(
        xticks=range(10),
        yticks=range(10),
        xlabel="predicted class",
        ylabel="true class",
        title=title,
    )
    for i in range(10):
        for j in range(10):
            color = "white" if m[i, j] > m.max() / 2 else "black"
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    ap.add_argument("--subset", type=int, default=10_000, help="training images used")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="folder holding MNIST/raw")
    ap.add_argument("--out", default="runs/kfold_mnist", help="folder for the PNG")
    ap.add_argument("--no-compile", action="store_true", help="run the vmapped step eagerly")
    args = ap.parse_args(argv)

    key = fdl.random.key(args.seed)
    k_subset, k_folds, k_init, k_epochs = fdl.random.split(key, 4)

    # data: ToTensor() then Normalize(0.5, 0.5), as the document does
    train = fdl.data.mnist(args.data, train=True)
    test = fdl.data.mnist(args.data, train=False)
    pick = fdl.random.permutation(k_subset, train.x.shape[0])[: args.subset]
    x = fdl.data.normalize(train.x[pick], 0.5, 0.5)  # (n, 1, 28, 28)
    y = train.y[pick]
    x_test = fdl.data.normalize(test.x, 0.5, 0.5)
    n, K = x.shape[0], args.folds

    folds = fdl.data.kfold(k_folds, n, K)
    train_sets = [tr for tr, _ in folds]
    val_masks = fdl.ensemble.fold_masks(folds, n)  # (K, n)
    print(
        f"{K}-fold CV on {n} MNIST training images ({args.model}); "
        f"train sizes {[len(t) for t in train_sets]}, validation sizes "
        f"{[len(v) for _, v in folds]}"
    )

    model = make_model(args.model)
    opt = fdl.optim.adam(lr=args.lr)

    def loss_fn(params, xb, yb, w):
        per = fdl.losses.cross_entropy(model.apply(params, xb), yb, reduction="none")  # (B,)
        return (per * w).sum() / w.sum().clamp_min(1)  # mean over the real samples

    params = fdl.ensemble.init(model.init, fdl.random.split(k_init, K))  # leaves (K, ...)
    opt_state = fdl.ensemble.init_optimizer(opt, params)
    step = fdl.ensemble.make_ensemble_train_step(loss_fn, opt, compile=not args.no_compile)

    t_start = time.perf_counter()
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        loss_sum = torch.zeros(K)
        count = torch.zeros(K)
        batches = fdl.ensemble.fold_batches(
            fdl.random.fold_in(k_epochs, epoch), train_sets, args.batch_size
        )
        for idx, w, active in batches:  # idx, w: (K, B); active: (K,)
            params, opt_state, loss = step(params, opt_state, x[idx], y[idx], w, active=active)
            real = w.sum(dim=1)
            loss_sum += loss * real
            count += real
        per_fold = (loss_sum / count).tolist()
        print(
            f"Epoch {epoch + 1}, Loss per fold: "
            + ", ".join(f"{v:.4f}" for v in per_fold)
            + f"  ({time.perf_counter() - t0:.1f} s)"
        )
    train_s = time.perf_counter() - t_start

    # validation: every model on its own held-out fold
    logits = fdl.ensemble.ensemble_predict(
        model.apply, params, x, 1000, output="member_logits"
    )  # (K, n, 10)
    val_acc = [float(fdl.metrics.accuracy(logits[k], y, mask=val_masks[k])) for k in range(K)]
    for k, acc in enumerate(val_acc):
        print(f"Fold {k + 1}: validation accuracy {100 * acc:.2f}% ({len(folds[k][1])} images)")
    mean, std = statistics.mean(val_acc), statistics.stdev(val_acc)
    print(f"Cross-validation accuracy: {100 * mean:.2f}% ± {100 * std:.2f}% (mean ± sample std)")

    # test: the ensemble of the K fold models, averaging probabilities
    probs = fdl.ensemble.ensemble_predict(model.apply, params, x_test, 1000)  # (10000, 10)
    member_logits = fdl.ensemble.ensemble_predict(
        model.apply, params, x_test, 1000, output="member_logits"
    )
    member_acc = [float(fdl.metrics.accuracy(z, test.y)) for z in member_logits]
    acc = float(fdl.metrics.accuracy(probs, test.y))
    print("Test accuracy of each fold model: " + ", ".join(f"{100 * a:.2f}%" for a in member_acc))
    print(f"Accuracy of the ensemble on the {len(test.y)} test images: {100 * acc:.2f}%")
    print(
        f"Ensemble macro F1 {float(fdl.metrics.f1(probs, test.y)):.4f}, "
        f"log-loss {float(fdl.metrics.log_loss(probs, test.y)):.4f}, "
        f"top-2 accuracy {100 * float(fdl.metrics.top_k_accuracy(probs, test.y, 2)):.2f}%"
    )
    cm = fdl.metrics.confusion_matrix(probs, test.y)
    png = Path(args.out) / "confusion_matrix.png"
    print(f"Confusion matrix (rows: true class):\n{cm}")
    if save_confusion_png(
        cm, png, f"{K}-fold ensemble ({args.model}) on MNIST test: {100 * acc:.2f}% accurate"
    ):
        print(f"Confusion matrix saved to {png}")
    print(f"Training took {train_s:.1f} s")
    return {"validation_accuracy": val_acc, "test_accuracy": acc}


if __name__ == "__main__":
    main()
