"""The text classifiers of the sequence benchmarks: fdl, and torch modules with its weights.

Two models over token ids ``(B, T)`` (vocabulary ``VOCAB``, length ``SEQ``):

* ``lstm``: Embedding(VOCAB, DIM) → 1-layer LSTM(DIM, DIM, batch_first) → Linear on the
  last step's output;
* ``transformer``: Embedding(VOCAB, DIM) → TransformerEncoderLayer(DIM, HEADS, FF, no
  dropout, post-norm, batch_first) → mean over the sequence → Linear.

:func:`torch_classifier` builds the same function as a ``torch.nn.Module`` loaded with
fdl's weights (``fdl.nn.state_dict``): torch's own layers, or (``opacus=True``) the
layers Opacus's hooks can take: ``opacus.layers.DPLSTM`` for the LSTM and, for the
encoder layer, ``DPMultiheadAttention`` in an encoder written out here. Opacus 1.6's
``DPMultiheadAttention(batch_first=True)`` does not compute torch's attention, so the
Opacus transformer runs sequence-first ``(T, B, ·)`` throughout (its hooks then take
batch axis 1: ``batch_first(kind)``), pooling to ``(1, B, DIM)`` before the head.
"""

from __future__ import annotations

from typing import Any

import torch

import fdl

VOCAB, SEQ, DIM, HEADS, FF, CLASSES = 256, 64, 64, 4, 128, 4
KINDS = ("lstm", "transformer")


def data(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids ``(batch, SEQ)`` and labels ``(batch,)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (batch, SEQ), generator=g)
    y = torch.randint(0, CLASSES, (batch,), generator=g)
    return x, y


def fdl_classifier(kind: str) -> tuple[Any, Any]:
    """``(params, loss_fn)``: the ``kind`` classifier's weights and its mean cross-entropy."""
    nn = fdl.nn
    emb, fc = nn.Embedding(VOCAB, DIM), nn.Linear(DIM, CLASSES)
    if kind == "transformer":
        body: Any = nn.TransformerEncoderLayer(DIM, HEADS, FF, 0.0, batch_first=True)
        run_body = lambda p, h: body.apply(p, h).mean(1)  # noqa: E731  # (B, T, d) -> (B, d)
    elif kind == "lstm":
        body = nn.LSTM(DIM, DIM, batch_first=True)
        run_body = lambda p, h: body.apply(p, h)[0][:, -1]  # noqa: E731  # (B, d): last step
    else:
        raise ValueError(f"unknown text model {kind!r}; expected one of {KINDS}")
    keys = fdl.random.split(fdl.random.key(0), 3)
    params = {"emb": emb.init(keys[0]), "body": body.init(keys[1]), "fc": fc.init(keys[2])}

    def loss_fn(p: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = fc.apply(p["fc"], run_body(p["body"], emb.apply(p["emb"], x)))  # (B, K)
        return fdl.losses.cross_entropy(logits, y)

    return params, loss_fn


def batch_first(kind: str, opacus: bool) -> bool:
    """Whether the torch module's layers see the batch on axis 0 (Opacus's ``batch_first``)."""
    return not (opacus and kind == "transformer")


class _Classifier(torch.nn.Module):
    """Embedding → body → head, batch-first, on torch's own layers."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        tnn = torch.nn
        self.kind = kind
        self.emb, self.fc = tnn.Embedding(VOCAB, DIM), tnn.Linear(DIM, CLASSES)
        if kind == "transformer":
            self.body: Any = tnn.TransformerEncoderLayer(DIM, HEADS, FF, 0.0, batch_first=True)
        else:
            self.body = tnn.LSTM(DIM, DIM, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)  # (B, T, d)
        if self.kind == "transformer":
            return self.fc(self.body(h).mean(1))  # (B, K)
        return self.fc(self.body(h)[0][:, -1])  # (B, K)


class _OpacusEncoderLayer(torch.nn.Module):
    """Post-norm encoder layer (ReLU, no dropout) on ``(T, B, d)``, attention by Opacus."""

    def __init__(self) -> None:
        super().__init__()
        from opacus.layers import DPMultiheadAttention

        tnn = torch.nn
        self.self_attn = DPMultiheadAttention(DIM, HEADS, batch_first=False)
        self.linear1, self.linear2 = tnn.Linear(DIM, FF), tnn.Linear(FF, DIM)
        self.norm1, self.norm2 = tnn.LayerNorm(DIM), tnn.LayerNorm(DIM)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm1(h + self.self_attn(h, h, h, need_weights=False)[0])  # (T, B, d)
        return self.norm2(h + self.linear2(torch.relu(self.linear1(h))))  # (T, B, d)


class _OpacusClassifier(torch.nn.Module):
    """The same classifier on the layers Opacus's hooks support (see the module docstring)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        from opacus.layers import DPLSTM

        self.kind = kind
        self.emb, self.fc = torch.nn.Embedding(VOCAB, DIM), torch.nn.Linear(DIM, CLASSES)
        self.body = (
            _OpacusEncoderLayer() if kind == "transformer" else DPLSTM(DIM, DIM, batch_first=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "lstm":
            return self.fc(self.body(self.emb(x))[0][:, -1])  # (B, K)
        h = self.body(self.emb(x.t()))  # (T, B, d)
        return self.fc(h.mean(0, keepdim=True)).squeeze(0)  # (1, B, K) -> (B, K)


def torch_classifier(kind: str, params: Any, *, opacus: bool = False) -> torch.nn.Module:
    """The ``kind`` classifier as a torch module holding ``params`` (see the module docstring)."""
    module = _OpacusClassifier(kind) if opacus else _Classifier(kind)
    state = dict(fdl.nn.state_dict(params))
    attn = "body.self_attn."
    if opacus and kind == "transformer":  # DPMultiheadAttention splits in_proj itself
        module.body.self_attn.load_state_dict(
            {k[len(attn) :]: v for k, v in state.items() if k.startswith(attn)}
        )
        state = {k: v for k, v in state.items() if not k.startswith(attn)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    loaded = set(state) | {attn + k for k in ("in_proj_weight", "in_proj_bias")}
    for name in missing:  # only the aliases Opacus keeps of what was loaded
        assert name.startswith((attn, "body.l")), (name, sorted(loaded))
    return module


def torch_names(module: torch.nn.Module, grads: dict[int, torch.Tensor]) -> dict[str, Any]:
    """Per-parameter tensors keyed by ``id(param)`` → keyed by fdl's (torch's) names.

    ``DPMultiheadAttention``'s ``q/k/vlinear`` are concatenated back into ``in_proj_*``;
    ``DPLSTM`` already names its parameters as ``torch.nn.LSTM`` does.
    """
    out: dict[str, Any] = {}
    for name, p in module.named_parameters():
        if id(p) in grads:
            out[name] = grads[id(p)]
    for kind in ("weight", "bias"):
        parts = [out.pop(f"body.self_attn.{n}linear.{kind}", None) for n in "qkv"]
        if all(t is not None for t in parts):
            out[f"body.self_attn.in_proj_{kind}"] = torch.cat(parts, 1)
    return out
