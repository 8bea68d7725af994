"""MAML on sinusoid regression (Finn et al., 2017), differentiating through fdl's optimizers.

Each task is ``y = A sin(x - φ)`` with ``A ~ U[0.1, 5]``, ``φ ~ U[0, π]``,
``x ~ U[-5, 5]``; a learner sees ``K = 10`` points and adapts a 1-40-40-1 ReLU
MLP by a few steps of ``fdl.optim.sgd(lr=0.01)`` (``--inner adam``: Adam, its
state kept per task). Three initialisations are
compared on the same held-out tasks, after 0..10 adaptation steps:

* ``maml``: the meta-gradient goes through the inner ``opt.update`` /
  ``apply_updates`` steps (second order: it differentiates the inner gradients);
* ``fomaml``: the same loop with the inner gradients detached (first order);
* ``pretrain``: one network trained on all tasks jointly, then fine-tuned.

The inner loop is ``torch.func.vmap``-ed over a meta-batch of tasks and the
outer gradient is ``torch.func.grad`` of the mean query loss; ``--compile``
compiles the whole meta-step (outer gradient and outer Adam update) with
``fullgraph=True``, once per variant (the step count, data and state are tensors:
no recompiles across meta-steps). Writes
``maml_sinusoid.json`` (post-adaptation MSE per inner step for each variant) and
``maml_sinusoid.png`` (adapted fits on held-out tasks; needs matplotlib).

    PYTHONPATH=. python examples/maml_sinusoid.py --out docs/   # full run
    PYTHONPATH=. python examples/maml_sinusoid.py --quick        # seconds (the test)
    PYTHONPATH=. python examples/maml_sinusoid.py --inner adam --compile --out /tmp/m
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
from typing import Any

import torch

import fdl

Tensor = torch.Tensor
MODEL = fdl.nn.Sequential(
    fdl.nn.Linear(1, 40), fdl.nn.ReLU(), fdl.nn.Linear(40, 40), fdl.nn.ReLU(), fdl.nn.Linear(40, 1)
)


def sample_tasks(key: Tensor, n_tasks: int, n_points: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, y, (A, φ))`` for ``n_tasks`` sinusoids: x, y are ``(n_tasks, n_points, 1)``."""
    k_amp, k_phase, k_x = fdl.random.split(key, 3)
    amp = fdl.random.uniform(k_amp, (n_tasks, 1, 1), 0.1, 5.0)
    phase = fdl.random.uniform(k_phase, (n_tasks, 1, 1), 0.0, math.pi)
    x = fdl.random.uniform(k_x, (n_tasks, n_points, 1), -5.0, 5.0)
    return x, amp * torch.sin(x - phase), torch.cat([amp, phase], -1)  # (T, N, 1) x2, (T, 1, 2)


def mse(params: Any, x: Tensor, y: Tensor) -> Tensor:
    return (MODEL.apply(params, x) - y).pow(2).mean()


def inner_optimizer(name: str, lr: float) -> fdl.optim.GradientTransformation:
    """The adaptation rule: ``fdl.optim.sgd(lr)``, or Adam with a root-safe second moment.

    ``adam`` is ``fdl.optim.adam(lr)``'s own chain with ``eps_root = 1e-16``: a
    ReLU unit that is dead on a task's support set has an exactly zero gradient,
    where ``sqrt'(0) = inf`` would make the second-order meta-gradient NaN.
    """
    if name == "sgd":
        return fdl.optim.sgd(lr=lr)
    return fdl.optim.chain(
        fdl.optim.scale_by_adam(0.9, 0.999, 1e-8, eps_root=1e-16),
        fdl.optim.scale_by_learning_rate(lr),
    )


def adapt(
    params: Any, x: Tensor, y: Tensor, steps: int, lr: float, first_order: bool, inner: str = "sgd"
) -> Any:
    """``steps`` updates of the ``inner`` optimizer on one task's support set.

    Second order (``first_order=False``): the outer gradient flows through each
    inner gradient (and, for Adam, through its moments). First order: the inner
    gradients are constants. The optimizer state is the task's own (under
    ``vmap`` it is batched over tasks with the updates).
    """
    opt = inner_optimizer(inner, lr)
    state = opt.init(params)
    for _ in range(steps):
        grads = torch.func.grad(mse)(params, x, y)
        if first_order:
            grads = fdl.tree.map(torch.Tensor.detach, grads)
        updates, state = opt.update(grads, state, params)
        params = fdl.optim.apply_updates(params, updates)
    return params


def meta_loss(
    params: Any, batch: tuple[Tensor, ...], steps: int, lr: float, fo: bool, inner: str = "sgd"
) -> Tensor:
    """Mean query MSE after adapting to each task of the batch (vmapped over tasks)."""

    def task(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        return mse(adapt(params, xs, ys, steps, lr, fo, inner), xq, yq)

    return torch.func.vmap(task)(*batch).mean()


def make_meta_step(variant: str, args: argparse.Namespace) -> tuple[Any, Any]:
    """``(outer optimizer, step)``: ``step(params, state, x, y) -> (params, state)``.

    ``x, y`` are ``(T, 2K, 1)``: the first ``K`` points of each task are its
    support set, the rest its query set. With ``args.compile`` the step is
    compiled with ``fullgraph=True``.
    """
    outer = fdl.optim.adam(lr=args.meta_lr)
    k, fo = args.shots, variant == "fomaml"

    def step(params: Any, state: Any, x: Tensor, y: Tensor) -> tuple[Any, Any]:
        if variant == "pretrain":
            grads = torch.func.grad(mse)(params, x, y)
        else:
            batch = (x[:, :k], y[:, :k], x[:, k:], y[:, k:])  # support, query: (T, K, 1) each
            steps, lr = args.inner_steps, args.inner_lr
            grads = torch.func.grad(meta_loss)(params, batch, steps, lr, fo, args.inner)
        updates, state = outer.update(grads, state, params)
        return fdl.optim.apply_updates(params, updates), state

    if args.compile:
        torch.compiler.reset()  # each variant's step is its own graph, compiled once
        step = torch.compile(step, fullgraph=True, backend=args.backend)
    return outer, step


def train(variant: str, key: Tensor, args: argparse.Namespace) -> Any:
    """Meta-train (``maml``, ``fomaml``) or pretrain jointly (``pretrain``)."""
    k_init, key = fdl.random.split(key)
    params = MODEL.init(k_init)
    outer, step = make_meta_step(variant, args)
    state = outer.init(params)
    for it in range(args.iterations):
        key, k_batch = fdl.random.split(key)
        x, y, _ = sample_tasks(k_batch, args.meta_batch, 2 * args.shots)
        params, state = step(params, state, x, y)
        if args.log_every and (it + 1) % args.log_every == 0:
            print(f"{variant} iteration {it + 1}", flush=True)
    return params


def evaluate(params: Any, tasks: tuple[Tensor, ...], args: argparse.Namespace) -> list[float]:
    """Mean query MSE over held-out tasks after 0, 1, ..., ``inner_steps_eval`` inner steps."""
    xs, ys, xq, yq = tasks
    curve = []
    for steps in range(args.inner_steps_eval + 1):

        def task(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, steps: int = steps) -> Tensor:
            return mse(adapt(params, xs, ys, steps, args.inner_lr, True, args.inner), xq, yq)

        with torch.no_grad():
            curve.append(float(torch.func.vmap(task)(xs, ys, xq, yq).mean()))
    return curve


def _pyplot(what: str) -> Any:
    """``matplotlib.pyplot`` (Agg backend), or None after a one-line notice."""
    try:
        import matplotlib
    except ImportError:
        print(f'skipped {what}: matplotlib is not installed (pip install "fdl[plot]")', flush=True)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fits(trained: dict[str, Any], args: argparse.Namespace, path: pathlib.Path) -> bool:
    """Fits after ``inner_steps_eval`` steps on three held-out tasks; False if skipped."""
    plt = _pyplot(str(path))
    if plt is None:
        return False
    x, y, ap = sample_tasks(fdl.random.key(args.seed + 2), 3, args.shots)
    grid = torch.linspace(-5, 5, 200).reshape(-1, 1)  # (200, 1)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for i, ax in enumerate(axes):
        amp, phase = ap[i, 0]
        ax.plot(grid, amp * torch.sin(grid - phase), "k", label="true")
        ax.plot(x[i], y[i], "k^", label=f"{args.shots} shots")
        for name, params in trained.items():
            adapted = adapt(
                params, x[i], y[i], args.inner_steps_eval, args.inner_lr, True, args.inner
            )
            with torch.no_grad():
                ax.plot(grid, MODEL.apply(adapted, grid), label=name)
        ax.set_ylim(-6, 6)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"adapted fits after {args.inner_steps_eval} {args.inner} steps")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=10000)
    ap.add_argument("--meta-batch", type=int, default=25)
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--inner", choices=("sgd", "adam"), default="sgd", help="inner optimizer")
    ap.add_argument("--inner-steps", type=int, default=1, help="inner steps in meta-training")
    ap.add_argument("--inner-steps-eval", type=int, default=10)
    ap.add_argument("--inner-lr", type=float, default=0.01)
    ap.add_argument("--meta-lr", type=float, default=1e-3)
    ap.add_argument("--eval-tasks", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=1000)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."))
    ap.add_argument("--variants", default="maml,fomaml,pretrain", help="comma-separated")
    ap.add_argument("--compile", action="store_true", help="compile each variant's meta-step")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend (--compile)")
    ap.add_argument("--quick", action="store_true", help="a few iterations (for the test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.iterations, args.meta_batch, args.eval_tasks = 30, 4, 8
        args.inner_steps_eval, args.log_every = 3, 0
    args.out.mkdir(parents=True, exist_ok=True)

    k = args.shots
    x, y, _ = sample_tasks(fdl.random.key(args.seed + 1), args.eval_tasks, k + 100)
    held_out = (x[:, :k], y[:, :k], x[:, k:], y[:, k:])  # K shots, 100 query points
    variants = args.variants.split(",")
    trained = {v: train(v, fdl.random.key(args.seed), args) for v in variants}
    results: dict[str, Any] = {v: evaluate(p, held_out, args) for v, p in trained.items()}
    results["inner_steps_eval"] = args.inner_steps_eval
    results["config"] = {k: v for k, v in vars(args).items() if k != "out"}
    (args.out / "maml_sinusoid.json").write_text(json.dumps(results, indent=1))
    for v in trained:
        print(
            f"{v:9s} MSE after 0..{args.inner_steps_eval} steps:", [round(c, 3) for c in results[v]]
        )
    plot_fits(trained, args, args.out / "maml_sinusoid.png")
    return results


if __name__ == "__main__":
    main()
