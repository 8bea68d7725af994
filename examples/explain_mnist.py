"""Explain the MNIST CNN: saliency, integrated gradients and SmoothGrad maps, and its filters.

Trains the CNN of ``examples/mnist_cnn.py`` (or loads the ``checkpoint.safetensors``
that example writes, with ``--checkpoint``), then, for a grid of test digits and
the predicted class of each:

* saliency ``|d f_c / d x|`` (``fdl.explain.saliency``);
* integrated gradients from a black baseline, 50 Gauss-Legendre steps, with the
  completeness gap ``max |sum(attr) - (f(x) - f(0))|`` printed
  (``fdl.explain.integrated_gradients``);
* SmoothGrad, 25 noisy copies with ``stdevs = 0.15`` in pixel units
  (``fdl.explain.smooth_grad``, noise from a key);

and writes them as overlays (``attributions.png``) plus the 32 first-layer 3x3
filters (``filters.png``). ``f_c`` is the log-probability of class ``c``; the
model normalizes its ``[0, 1]`` input inside, so the maps are in pixel space.

Run::

    python examples/explain_mnist.py                                  # 3 epochs
    python examples/explain_mnist.py --epochs 1 --limit 2000          # quick mode
    python examples/explain_mnist.py --checkpoint runs/mnist_cnn/checkpoint.safetensors
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import torch

import fdl


def _cnn_class() -> Any:
    """The CNN of examples/mnist_cnn.py (loaded by path: examples/ is not a package)."""
    path = Path(__file__).resolve().parent / "mnist_cnn.py"
    spec = importlib.util.spec_from_file_location("_mnist_cnn_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.CNN


def pixels_forward(model: Any) -> Any:
    """``apply(params, x)`` on pixels in ``[0, 1]`` (normalized inside, as in mnist_cnn)."""

    def apply(params: Any, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return model.apply(params, fdl.data.normalize(x, 0.5, 0.5), **kwargs)

    return apply


def attributions(forward: Any, x: torch.Tensor, target: torch.Tensor, args: Any) -> dict[str, Any]:
    """The three maps for a batch, each ``(N, 1, 28, 28)``; IG's completeness gap."""
    ig, delta = fdl.explain.integrated_gradients(
        forward, x, target, n_steps=args.ig_steps, return_convergence_delta=True
    )
    return {
        "saliency": fdl.explain.saliency(forward, x, target),
        "integrated gradients": ig,
        "SmoothGrad": fdl.explain.smooth_grad(
            forward,
            x,
            target,
            nt_samples=args.nt_samples,
            stdevs=args.stdevs,
            key=fdl.random.key(args.seed + 3),
        ),
        "ig_delta": delta,
    }


def save_overlays(x: torch.Tensor, pred: torch.Tensor, maps: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["saliency", "integrated gradients", "SmoothGrad"]
    n = x.shape[0]
    fig, axes = plt.subplots(n, 1 + len(names), figsize=(2.0 * (1 + len(names)), 2.0 * n))
    for i in range(n):
        axes[i, 0].imshow(x[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(f"pred {int(pred[i])}", fontsize=9)
        for j, name in enumerate(names, start=1):
            a = maps[name][i, 0].detach()
            if name == "integrated gradients":  # signed: red adds evidence, blue removes it
                lim = float(a.abs().max()) or 1.0
                overlay, cmap, vmin = a.numpy(), "bwr", -lim
            else:
                lim = float(a.max()) or 1.0
                overlay, cmap, vmin = a.numpy(), "inferno", 0.0
            axes[i, j].imshow(x[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[i, j].imshow(overlay, cmap=cmap, vmin=vmin, vmax=lim, alpha=0.7)
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_filters(weight: torch.Tensor, path: Path) -> None:
    """The first-layer filters ``(32, 1, 3, 3)`` as a 4 x 8 grid, one shared color scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = weight.detach()[:, 0]
    lim = float(w.abs().max())
    fig, axes = plt.subplots(4, 8, figsize=(8, 4.4))
    for k, ax in enumerate(axes.flat):
        ax.imshow(w[k].numpy(), cmap="bwr", vmin=-lim, vmax=lim)
        ax.set_title(str(k), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("conv1 filters (3x3; red > 0, blue < 0)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--limit", type=int, default=None, help="first N training images")
    parser.add_argument("--checkpoint", default=None, help="params from examples/mnist_cnn.py")
    parser.add_argument("--digits", type=int, default=8, help="test digits in the grid")
    parser.add_argument("--ig-steps", type=int, default=50)
    parser.add_argument("--nt-samples", type=int, default=25)
    parser.add_argument("--stdevs", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--data-dir", default=None, help="folder holding MNIST/raw (or FDL_DATA_DIR)"
    )
    parser.add_argument("--out", default="runs/explain_mnist")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = _cnn_class()()
    apply = pixels_forward(model)
    t0 = time.perf_counter()
    if args.checkpoint:
        params = fdl.checkpoint.load(args.checkpoint)["params"]
    else:
        x, y = fdl.data.mnist(args.data_dir, train=True)
        if args.limit is not None:
            x, y = x[: args.limit], y[: args.limit]
        params, _, _ = fdl.train.fit(
            apply,
            fdl.losses.nll_loss,
            fdl.optim.adam(lr=args.lr),
            model.init(fdl.random.key(args.seed)),
            (x, y),
            key=fdl.random.key(args.seed + 1),
            epochs=args.epochs,
            batch_size=args.batch_size,
            compile=args.compile,
            progress=False,
        )
    x_test, y_test = fdl.data.mnist(args.data_dir, train=False)
    x, y = x_test[: args.digits], y_test[: args.digits]
    forward = lambda v: apply(params, v)  # noqa: E731
    with torch.no_grad():
        pred = forward(x).argmax(1)
    maps = attributions(forward, x, pred, args)
    gap = float(maps["ig_delta"].abs().max())
    print(f"predicted {pred.tolist()} (labels {y.tolist()}); IG completeness gap {gap:.2e}")
    save_overlays(x, pred, maps, out / "attributions.png")
    save_filters(params["conv1"]["weight"], out / "filters.png")
    wall = time.perf_counter() - t0
    print(f"Done in {wall:.1f}s; wrote {out}/attributions.png, filters.png")
    return {"pred": pred, "labels": y, "ig_delta": gap, "wall_s": wall}


if __name__ == "__main__":
    main()
