"""Per-sample gradients of the document's MNIST CNN with fdl.

The network (a 2x2 max-pool after each convolution, so fc1 sees 64·7·7 = 3136
features)::

    conv1 32@3x3 pad 1 → relu → pool 2 → conv2 64@3x3 pad 1 → relu → pool 2
    → flatten → fc1 3136→128 → relu → fc2 128→10 → log_softmax;  loss: nll_loss

For a batch of MNIST images this computes every example's gradient with
``fdl.per_sample_grads``, checks a few against single-example
``torch.func.grad`` calls, draws a histogram of the per-example gradient
norms (PNG), and times fdl against a per-example loop.

Run::

    python examples/per_sample_grads.py --batch 256 --out per_sample_norms.png
    python examples/per_sample_grads.py --batch 16 --repeats 1     # a quick look

The histogram needs matplotlib (``pip install "fdl[plot]"``); without it, it
is skipped with a notice and everything else runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

import fdl
from fdl import nn


def make_model() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 32, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),  # (B, 32, 14, 14)
            conv2=nn.Conv2d(32, 64, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),  # (B, 64, 7, 7)
            flatten=nn.Flatten(),  # (B, 3136)
            fc1=nn.Linear(64 * 7 * 7, 128),
            relu3=nn.ReLU(),
            fc2=nn.Linear(128, 10),
            log_softmax=nn.LogSoftmax(dim=1),
        )
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


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--data-dir", type=str, default=None, help="folder holding MNIST/raw/")
    ap.add_argument("--out", type=str, default="per_sample_norms.png")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    x, y = fdl.data.mnist(args.data_dir, train=False)
    x = fdl.data.normalize(x[: args.batch], 0.5, 0.5)  # the document's Normalize(0.5, 0.5)
    y = y[: args.batch]

    model = make_model()
    params = model.init(fdl.random.key(0))

    def loss_fn(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fdl.losses.nll_loss(model.apply(p, x), y)

    per_sample = fdl.per_sample_grads(loss_fn)
    grads = per_sample(params, x, y)
    for path, leaf in fdl.tree.to_flat_dict(grads).items():
        print(f"{path:12s} {tuple(leaf.shape)}")

    # check against the definition on a few examples
    single = torch.func.grad(loss_fn)
    for i in (0, args.batch // 2, args.batch - 1):
        want = single(params, x[i : i + 1], y[i : i + 1])
        got = fdl.tree.map(lambda t, i=i: t[i], grads)
        assert fdl.tree.allclose(got, want, rtol=1e-4, atol=1e-6), f"example {i} differs"
    print("per-sample gradients match single-example torch.func.grad (3 examples checked)")

    norms = fdl.per_sample_grad_norms(loss_fn)(params, x, y)
    print(
        f"per-example gradient norms: min {float(norms.min()):.3f}  "
        f"median {float(norms.median()):.3f}  max {float(norms.max()):.3f}"
    )

    plt = pyplot("the histogram of gradient norms")
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(norms.numpy(), bins=40)
        ax.set_xlabel("per-example gradient norm (global L2 over all parameters)")
        ax.set_ylabel("examples")
        ax.set_title(f"MNIST CNN at initialisation, {args.batch} test images")
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        plt.close(fig)
        print(f"histogram written to {args.out}")

    def loop() -> Any:
        per = [single(params, x[i : i + 1], y[i : i + 1]) for i in range(args.batch)]
        return fdl.tree.stack(per)

    t_fdl = _median_time(lambda: per_sample(params, x, y), args.repeats)
    t_loop = _median_time(loop, args.repeats)
    t_batch = _median_time(lambda: single(params, x, y), args.repeats)
    print(f"one batch gradient:    {t_batch * 1e3:8.1f} ms")
    print(f"fdl.per_sample_grads:  {t_fdl * 1e3:8.1f} ms  ({t_fdl / t_batch:.2f}x batch gradient)")
    print(f"per-example loop:      {t_loop * 1e3:8.1f} ms  ({t_loop / t_fdl:.1f}x the time of fdl)")


if __name__ == "__main__":
    main()
