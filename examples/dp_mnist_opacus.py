"""The control for examples/dp_mnist.py: the same DP-SGD run trained with Opacus.

Same tanh CNN (as a ``torch.nn`` module, started from the very weights fdl
initialises for ``--seed``), same normalised MNIST tensors, learning rate,
noise multiplier, clipping norm and epochs; Opacus's ``make_private`` with
``poisson_sampling=True`` draws the batches and adds the noise, from two
``torch.Generator`` seeded from ``--seed`` (so a run is repeatable).

Opacus sets the sample rate to ``1 / len(data_loader)``; the loader here holds
``N // batch_size`` batches (``drop_last=True``), the same number of steps per
epoch as fdl's ``round(N / batch_size)`` whenever ``N / batch_size`` has a
fractional part below one half (MNIST with 256: 234 steps, q = 1/234 against
fdl's 256/60000 = 1/234.375).

Each epoch prints the test accuracy and three ε at δ: the privacy engine's own
RDP accountant (Opacus's q and step count), and Opacus's ``RDPAccountant`` and
``PRVAccountant`` evaluated at fdl's ``(q, σ, steps)`` next to
``fdl.privacy.epsilon`` for the same triple. Run::

    python examples/dp_mnist_opacus.py --paper --threads 1 --out runs/paper_opacus.json
    python examples/dp_mnist_opacus.py --epochs 1 --limit 2000      # a quick look

Takes every flag of examples/dp_mnist.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

import fdl


def _load_fdl_example() -> ModuleType:
    """examples/dp_mnist.py as a module (its flags, data and initial weights are shared)."""
    path = Path(__file__).resolve().with_name("dp_mnist.py")
    spec = importlib.util.spec_from_file_location("_dp_mnist_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


dp_mnist = _load_fdl_example()


def torch_model() -> nn.Sequential:
    """The network of ``dp_mnist.make_model`` in ``torch.nn``, with the same parameter names."""
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


def initial_model(seed: int) -> nn.Sequential:
    """``torch_model()`` holding the weights ``dp_mnist.py`` starts from for ``seed``."""
    _, params = dp_mnist.init_params(dp_mnist.make_model(), seed)
    module = torch_model()
    module.load_state_dict({k: v.clone() for k, v in fdl.nn.state_dict(params).items()})
    return module


def opacus_epsilons(steps: int, sigma: float, q: float, delta: float) -> dict[str, float]:
    """ε after ``steps`` steps at ``(q, σ)``: Opacus's RDP and PRV accountants and fdl's."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    out = {"fdl_rdp": fdl.privacy.epsilon(steps, sigma, q, delta)}
    for name, accountant in (("opacus_rdp", RDPAccountant()), ("opacus_prv", PRVAccountant())):
        accountant.history = [(sigma, q, steps)]  # what `steps` calls of .step() would record
        out[name] = float(accountant.get_epsilon(delta=delta))
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    from opacus import PrivacyEngine

    args = dp_mnist.parse_args(
        argv, description=__doc__.splitlines()[0], out="dp_mnist_opacus_results.json"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = dp_mnist.load_data(args)
    n = x_train.shape[0]
    q_fdl = args.batch_size / n
    steps_fdl = round(1 / q_fdl)

    model = initial_model(args.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    # the same cosine annealing as fdl's, stepped once per logical step (fdl's step count)
    scheduler = None
    if args.lr_decay == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=args.epochs * steps_fdl
        )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x_train, y_train),
        batch_size=args.batch_size,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    with warnings.catch_warnings():  # Opacus warns that secure_mode is off: it is a control run
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant="rdp")
        model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=args.sigma,
            max_grad_norm=args.clip,
            poisson_sampling=True,
            noise_generator=torch.Generator().manual_seed(args.seed + 1),
        )
    q = loader.sample_rate
    criterion = nn.CrossEntropyLoss()

    def accuracy() -> float:
        model.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, x_test.shape[0], 1000):
                pred = model(x_test[s : s + 1000]).argmax(1)
                correct += int((pred == y_test[s : s + 1000]).sum())
        model.train()
        return 100.0 * correct / x_test.shape[0]

    print(
        f"n={n} opacus q={q:.6f} steps/epoch={len(loader)} (fdl: q={q_fdl:.6f}, "
        f"{steps_fdl} steps/epoch) sigma={args.sigma} C={args.clip} lr={args.lr} "
        f"momentum={args.momentum}",
        flush=True,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    total_steps = 0
    t0 = time.perf_counter()
    model.train()
    for epoch in range(1, args.epochs + 1):
        losses: list[float] = []
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            with warnings.catch_warnings():
                # the images need no gradient, so torch notes that conv1's backward hook sees none
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(float(loss.detach()))
            total_steps += 1
            if total_steps == args.max_steps:
                seconds = time.perf_counter() - t0
                print(f"timing: {total_steps} steps in {seconds:.1f}s", flush=True)
                return history
        acc = accuracy()
        row = {
            "epoch": epoch,
            "steps": total_steps,
            "train_loss": sum(losses) / max(len(losses), 1),
            "test_accuracy": acc,
            "epsilon_engine": float(engine.get_epsilon(args.delta)),
            "sample_rate": q,
            "fdl_steps": epoch * steps_fdl,
            "fdl_sample_rate": q_fdl,
            **opacus_epsilons(epoch * steps_fdl, args.sigma, q_fdl, args.delta),
            "delta": args.delta,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        print(
            f"epoch {epoch}: loss {row['train_loss']:.4f}  test accuracy {acc:.2f}%  "
            f"epsilon: engine {row['epsilon_engine']:.3f}; at fdl's (q, sigma, "
            f"{row['fdl_steps']} steps): opacus RDP {row['opacus_rdp']:.3f}, "
            f"opacus PRV {row['opacus_prv']:.3f}, fdl RDP {row['fdl_rdp']:.3f} "
            f"(delta={args.delta})  [{row['seconds']:.0f}s]",
            flush=True,
        )
        out.write_text(json.dumps({"args": vars(args), "history": history}, indent=2))
    return history


if __name__ == "__main__":
    main()
