"""Character-level language model with fdl: an LSTM (default) or a small causal Transformer.

The model and training of ``examples/char_lm_torch.py``, written as pure fdl functions and
one compiled train step. Params are keyed like the torch module's ``state_dict()``
(``embed.weight``, ``lstm.weight_ih_l0``, ..., ``head.bias``), so either checkpoint loads
into the other.

Corpus (offline, no download): source files of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``), split by file (see ``char_lm_torch.SPLITS``)::

    train: argparse.py dataclasses.py enum.py functools.py inspect.py textwrap.py typing.py
    val:   json/decoder.py json/encoder.py heapq.py
    test:  bisect.py shlex.py string.py

Each step trains on ``batch_size`` random windows drawn with ``fdl.random`` from the step's
key; the validation files are scored in bits per character (``cross-entropy / ln 2``)
after every epoch and the test files at the end. Then text is sampled from a key
(Gumbel-max: ``argmax(logits - log(-log u))``), and ``--out`` receives
``checkpoint.safetensors`` (params, optimizer state, history), then ``loss_curve.png``.

Run::

    python examples/char_lm.py                        # LSTM, compiled step
    python examples/char_lm.py --model transformer
    python examples/char_lm.py --limit 2000 --epochs 1 --steps 3 --no-compile   # quick mode
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

import fdl
from fdl import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from char_lm_torch import SPLITS, VOCAB, load_corpus, windows  # noqa: E402

__all__ = ["SPLITS", "build_model"]


def build_model(kind: str, hidden: int, seq_len: int) -> tuple[dict[str, nn.Layer], Any]:
    """The layers and ``logits_fn(params, x, key=None, train=False)``: ``(N, L) -> (N, L, V)``.

    ``kind`` is ``"lstm"`` or ``"transformer"``.
    """
    if kind == "lstm":
        layers: dict[str, nn.Layer] = {
            "embed": nn.Embedding(VOCAB, 64),
            "lstm": nn.LSTM(64, hidden, 2, dropout=0.1, batch_first=True),
            "head": nn.Linear(hidden, VOCAB),
        }

        def logits(
            params: Any, x: torch.Tensor, key: Any = None, train: bool = False
        ) -> torch.Tensor:
            emb = layers["embed"].apply(params["embed"], x)  # (N, L, 64)
            h, _ = layers["lstm"].apply(params["lstm"], emb, key=key, train=train)
            return layers["head"].apply(params["head"], h)  # (N, L, V)

        return layers, logits
    d = hidden // 2
    block = nn.TransformerEncoderLayer(
        d, 4, 4 * d, 0.1, activation="gelu", batch_first=True, norm_first=True
    )
    layers = {
        "embed": nn.Embedding(VOCAB, d),
        "pos": nn.Embedding(seq_len, d),
        "encoder": nn.TransformerEncoder(block, 2),
        "norm": nn.LayerNorm(d),
        "head": nn.Linear(d, VOCAB),
    }

    def logits_tf(
        params: Any, x: torch.Tensor, key: Any = None, train: bool = False
    ) -> torch.Tensor:
        length = x.shape[1]
        mask = torch.ones(length, length, dtype=torch.bool).tril().logical_not()  # True = hidden
        h = layers["embed"].apply(params["embed"], x)
        h = h + layers["pos"].apply(params["pos"], torch.arange(length))  # (N, L, d)
        h = layers["encoder"].apply(
            params["encoder"], h, mask, is_causal=True, key=key, train=train
        )
        return layers["head"].apply(params["head"], layers["norm"].apply(params["norm"], h))

    return layers, logits_tf


def sample(logits_fn: Any, params: Any, prompt: str, n: int, seq_len: int, key: Any) -> str:
    """``n`` characters after ``prompt``, each drawn by Gumbel-max from its own key."""
    codes = [c if c < VOCAB else ord("?") for c in prompt.encode("ascii", "replace")]
    for k in fdl.random.split(key, n):
        x = torch.tensor([codes[-seq_len:]])
        with torch.no_grad():
            last = logits_fn(params, x)[0, -1]  # (V,)
        u = fdl.random.uniform(k, (VOCAB,), 1e-12, 1.0)
        codes.append(int(torch.argmax(last - torch.log(-torch.log(u)))))
    return bytes(codes).decode("ascii")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["lstm", "transformer"], default="lstm")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="training steps per epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-windows", type=int, default=200)
    parser.add_argument("--sample-chars", type=int, default=200)
    parser.add_argument("--limit", type=int, default=None, help="characters per split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/char_lm"))
    args = parser.parse_args()

    data = load_corpus(args.limit)
    print("corpus:", {s: f"{len(t)} chars from {', '.join(SPLITS[s])}" for s, t in data.items()})
    layers, logits_fn = build_model(args.model, args.hidden, args.seq_len)
    key = fdl.random.key(args.seed)
    k_init, k_train, k_sample = fdl.random.split(key, 3)
    params = {
        name: layer.init(k)
        for k, (name, layer) in zip(
            fdl.random.split(k_init, len(layers)), layers.items(), strict=True
        )
    }
    params = {k: v for k, v in params.items() if v}  # parameter-free layers have no entry

    def loss_fn(params: Any, batch: torch.Tensor, key: Any) -> torch.Tensor:
        logits = logits_fn(params, batch[:, :-1], key=key, train=True)  # (N, L, V)
        return fdl.losses.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))

    def eval_loss(params: Any, w: torch.Tensor) -> torch.Tensor:
        logits = logits_fn(params, w[:, :-1])
        return fdl.losses.cross_entropy(logits.reshape(-1, VOCAB), w[:, 1:].reshape(-1))

    opt = fdl.optim.adam(lr=args.lr)
    opt_state = opt.init(params)
    step = fdl.train.make_train_step(loss_fn, opt, compile=not args.no_compile)
    evaluate = fdl.train.make_eval_step(eval_loss, compile=False)
    held_out = {s: windows(data[s], args.seq_len, args.eval_windows) for s in ("val", "test")}
    offsets = torch.arange(args.seq_len + 1)
    high = len(data["train"]) - args.seq_len - 1

    history: dict[str, list[float]] = {"train_loss": [], "val_bpc": []}
    for epoch in range(1, args.epochs + 1):
        t0, total = time.perf_counter(), 0.0
        for k in fdl.random.split(fdl.random.fold_in(k_train, epoch), args.steps):
            k_batch, k_drop = fdl.random.split(k)
            starts = fdl.random.randint(k_batch, (args.batch_size,), 0, high)
            batch = data["train"][starts[:, None] + offsets]  # (N, L + 1)
            params, opt_state, loss = step(params, opt_state, batch, k_drop)
            total += float(loss)
            history["train_loss"].append(float(loss))
        history["val_bpc"].append(float(evaluate(params, held_out["val"])) / math.log(2))
        print(
            f"Epoch {epoch}: train loss {total / args.steps:.4f}, "
            f"val {history['val_bpc'][-1]:.4f} bits/char ({time.perf_counter() - t0:.1f} s)"
        )
    test_bpc = float(evaluate(params, held_out["test"])) / math.log(2)
    print(f"Test: {test_bpc:.4f} bits/char")
    print(
        "Sample:",
        repr(sample(logits_fn, params, "def ", args.sample_chars, args.seq_len, k_sample)),
    )

    args.out.mkdir(parents=True, exist_ok=True)
    fdl.checkpoint.save(
        args.out / "checkpoint.safetensors",
        {"params": params, "opt_state": opt_state},
        metadata={"history": json.dumps({**history, "test_bpc": test_bpc}), "model": args.model},
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping loss_curve.png")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([x / math.log(2) for x in history["train_loss"]], label="train (bits/char)")
    ax.plot(
        [args.steps * (i + 1) for i in range(args.epochs)], history["val_bpc"], "o-", label="val"
    )
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.legend()
    fig.savefig(args.out / "loss_curve.png", dpi=100)
    print(f"wrote {args.out / 'checkpoint.safetensors'} and {args.out / 'loss_curve.png'}")


if __name__ == "__main__":
    main()
