"""Character-level language model in plain PyTorch (``nn.LSTM``, ``torch.optim``).

The reference for ``examples/char_lm.py``: the same corpus, split, model, optimizer and
schedule of steps, written with ``torch.nn`` modules and ``torch.optim.Adam``.

Corpus (offline, no download): source files of the Python standard library of the running
interpreter, read from ``sysconfig.get_paths()["stdlib"]`` and split by file::

    train: argparse.py dataclasses.py enum.py functools.py inspect.py textwrap.py typing.py
    val:   json/decoder.py json/encoder.py heapq.py
    test:  bisect.py shlex.py string.py

Characters are ASCII code points (vocabulary 128; anything else becomes ``?``).
A batch is ``batch_size`` random windows of ``seq_len + 1`` characters of the training
text; the model predicts each next character. Held-out text is scored in consecutive
windows; the score is bits per character, ``mean cross-entropy (nats) / ln 2``.

Run::

    python examples/char_lm_torch.py                       # LSTM
    python examples/char_lm_torch.py --model transformer   # small causal Transformer
    python examples/char_lm_torch.py --limit 2000 --epochs 1 --steps 3   # quick mode
"""

from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
from pathlib import Path

import torch
from torch import nn

VOCAB = 128
SPLITS = {
    "train": (
        "argparse.py", "dataclasses.py", "enum.py", "functools.py", "inspect.py",
        "textwrap.py", "typing.py",
    ),
    "val": ("json/decoder.py", "json/encoder.py", "heapq.py"),
    "test": ("bisect.py", "shlex.py", "string.py"),
}  # fmt: skip


def load_corpus(limit: int | None = None) -> dict[str, torch.Tensor]:
    """``{split: int64 codes}`` from the standard library files of ``SPLITS``.

    ``limit`` keeps the first ``limit`` characters of each split (quick mode).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    out = {}
    for split, files in SPLITS.items():
        text = "\n".join((root / f).read_text(encoding="utf-8") for f in files)
        if limit is not None:
            text = text[:limit]
        codes = [c if c < VOCAB else ord("?") for c in text.encode("ascii", "replace")]
        out[split] = torch.tensor(codes, dtype=torch.long)
    return out


def windows(text: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Consecutive ``(W, seq_len + 1)`` windows (overlapping by one character)."""
    n = (len(text) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    idx = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)[None, :]
    return text[idx]


class LSTMLM(nn.Module):
    """Embedding -> LSTM -> Linear."""

    def __init__(self, embed: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, dropout=dropout, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x))
        return self.head(h)  # (N, L, VOCAB)


class TransformerLM(nn.Module):
    """Token + position embeddings -> causal pre-norm TransformerEncoder -> LayerNorm -> Linear."""

    def __init__(self, d: int, heads: int, layers: int, seq_len: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.pos = nn.Embedding(seq_len, d)
        layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        mask = torch.ones(length, length, dtype=torch.bool).tril().logical_not()
        h = self.embed(x) + self.pos(torch.arange(length))
        h = self.encoder(h, mask=mask, is_causal=True)
        return self.head(self.norm(h))


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
    parser.add_argument("--limit", type=int, default=None, help="characters per split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/char_lm_torch"))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = load_corpus(args.limit)
    if args.model == "lstm":
        model: nn.Module = LSTMLM(64, args.hidden, 2, 0.1)
    else:
        model = TransformerLM(args.hidden // 2, 4, 2, args.seq_len, 0.1)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    held_out = {s: windows(data[s], args.seq_len, args.eval_windows) for s in ("val", "test")}

    def bpc(w: torch.Tensor) -> float:
        model.eval()
        with torch.no_grad():
            logits = model(w[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), w[:, 1:].reshape(-1))
        model.train()
        return float(loss) / math.log(2)

    history: dict[str, list[float]] = {"train_loss": [], "val_bpc": []}
    for epoch in range(1, args.epochs + 1):
        t0, total = time.perf_counter(), 0.0
        for _ in range(args.steps):
            starts = torch.randint(
                0, len(data["train"]) - args.seq_len - 1, (args.batch_size,), generator=gen
            )
            batch = data["train"][starts[:, None] + torch.arange(args.seq_len + 1)]
            logits = model(batch[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            history["train_loss"].append(loss.item())
        history["val_bpc"].append(bpc(held_out["val"]))
        print(
            f"Epoch {epoch}: train loss {total / args.steps:.4f}, "
            f"val {history['val_bpc'][-1]:.4f} bits/char ({time.perf_counter() - t0:.1f} s)"
        )
    test_bpc = bpc(held_out["test"])
    print(f"Test: {test_bpc:.4f} bits/char")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "checkpoint.pt")
    (args.out / "history.json").write_text(json.dumps({**history, "test_bpc": test_bpc}))


if __name__ == "__main__":
    main()
