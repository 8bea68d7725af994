"""The lean autograd functions (softmax, log-softmax, layer norm, attention) vs torch.

Each entry is one registry line: the fdl function, torch's function, a reference written in
torch ops that supports forward mode, the inputs, and the bytes the backward may keep (computed
from the shapes). Every property runs over every entry: values and gradients equal torch's,
double backward (``gradgradcheck``), forward mode (``torch.func.jvp``), ``vmap`` of per-sample
gradients equal to a loop, and what autograd saves is no more than the bound; one compiled
function over all entries gives the eager values without a graph break.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from fdl.nn import _lean_attention
from fdl.nn import functional as fF

Tensor = torch.Tensor
B, H, L, S, E = 3, 2, 5, 4, 3


def _dead_mask() -> Tensor:
    """A bool ``(L, S)`` take-part mask: causal-like, with query 0 seeing no key at all."""
    m = torch.ones(L, S, dtype=torch.bool).tril()
    m[0] = False
    return m


def _make_bias() -> Tensor:
    """A float ``(H, L, S)`` additive bias with ``-inf`` entries (one fully masked row)."""
    g = torch.Generator().manual_seed(1)
    b = torch.randn(H, L, S, generator=g, dtype=torch.float64)
    return b.masked_fill(~_dead_mask(), float("-inf"))


_BIAS = _make_bias()


def _ref_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
    """``softmax(QKᵀ/√E + bias) V`` with torch's softmax, dead rows giving 0 (forward-mode ok)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    dead = torch.isneginf(scores).all(-1, keepdim=True)
    p = torch.softmax(torch.where(dead, torch.zeros_like(scores), scores), -1)
    return torch.where(dead, torch.zeros_like(p), p) @ v


def _mask_bias() -> Tensor:
    return torch.zeros(L, S, dtype=torch.float64).masked_fill(~_dead_mask(), float("-inf"))


@dataclass(frozen=True)
class Entry:
    name: str
    fdl_fn: Callable[..., Tensor]
    torch_fn: Callable[..., Tensor]
    ref_fn: Callable[..., Tensor]  # torch ops with forward-mode derivatives
    shapes: tuple[tuple[int, ...], ...]
    saved: Callable[[tuple[Tensor, ...]], int]  # bytes the backward may keep


def _nbytes(*ts: Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _rows(x: Tensor, dims: int) -> int:
    """Bytes of one value per normalised slice (the layer norm's ``rstd``)."""
    return math.prod(x.shape[: x.dim() - dims]) * x.element_size()


def _rowwise(
    name: str,
    fdl_fn: Callable[..., Tensor],
    torch_fn: Callable[..., Tensor],
    dim: int,
    shape: tuple,
) -> Entry:
    """A softmax-family entry: torch's function is also the forward-mode reference."""
    return Entry(
        name,
        lambda x: fdl_fn(x, dim=dim),
        lambda x: torch_fn(x, dim),
        lambda x: torch_fn(x, dim),
        (shape,),
        lambda xs: _nbytes(xs[0]),
    )


ENTRIES = [
    _rowwise("softmax", fF.softmax, torch.softmax, -1, (B, L, S)),
    _rowwise("softmax_dim0", fF.softmax, torch.softmax, 0, (B, L)),
    _rowwise("log_softmax", fF.log_softmax, torch.log_softmax, -1, (B, L, S)),
    Entry(
        "layer_norm",
        lambda x, w, b: fF.layer_norm(x, (S,), w, b),
        lambda x, w, b: F.layer_norm(x, (S,), w, b),
        lambda x, w, b: F.layer_norm(x, (S,), w, b),
        ((B, L, S), (S,), (S,)),
        lambda xs: _nbytes(*xs[1:]) + _nbytes(xs[0]) + _rows(xs[0], 1),
    ),
    Entry(
        "layer_norm_2d",
        lambda x: fF.layer_norm(x, (L, S)),
        lambda x: F.layer_norm(x, (L, S)),
        lambda x: F.layer_norm(x, (L, S)),
        ((B, L, S),),
        lambda xs: _nbytes(xs[0]) + _rows(xs[0], 2),
    ),
    Entry(
        "attention",
        lambda q, k, v: fF.scaled_dot_product_attention(q, k, v),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        lambda q, k, v: _ref_attention(q, k, v, None),
        ((B, H, L, E), (B, H, S, E), (B, H, S, E + 1)),
        lambda xs: _nbytes(*xs),
    ),
    Entry(
        "attention_dead_row",
        lambda q, k, v: fF.scaled_dot_product_attention(q, k, v, attn_mask=_dead_mask()),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=_dead_mask()),
        lambda q, k, v: _ref_attention(q, k, v, _mask_bias().to(q.dtype)),
        ((B, H, L, E), (B, H, S, E), (B, H, S, E)),
        lambda xs: _nbytes(*xs) + L * S * xs[0].element_size(),
    ),
    Entry(
        "attention_broadcast_kv",
        lambda q, k, v: fF.scaled_dot_product_attention(q, k, v),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        lambda q, k, v: _ref_attention(q, k, v, None),
        ((B, H, L, E), (1, H, S, E), (1, H, S, E)),
        lambda xs: _nbytes(*xs),
    ),
    Entry(
        "attention_learned_bias",
        lambda q, k, v, b: fF.scaled_dot_product_attention(
            q, k, v, attn_mask=b + _BIAS.to(b.dtype)
        ),
        lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, attn_mask=b + _BIAS.to(b.dtype)),
        lambda q, k, v, b: _ref_attention(q, k, v, b + _BIAS.to(b.dtype)),
        ((B, H, L, E), (B, H, S, E), (B, H, S, E), (L, S)),
        lambda xs: _nbytes(*xs[:3]) + H * L * S * 8,
    ),
    # "_cut": run with parts of one row each (see the entry fixture)
    Entry(
        "attention_cut",
        lambda q, k, v, b: fF.scaled_dot_product_attention(q, k, v, attn_mask=b),
        lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, attn_mask=b),
        lambda q, k, v, b: _ref_attention(q, k, v, b),
        ((B, H, L, E), (B, H, S, E), (B, H, S, E), (B, 1, 1, S)),
        lambda xs: _nbytes(*xs),
    ),
    Entry(
        "attention_cut_broadcast",
        lambda q, k, v, b: fF.scaled_dot_product_attention(q, k, v, attn_mask=b),
        lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, attn_mask=b),
        lambda q, k, v, b: _ref_attention(q, k, v, b),
        ((B, H, L, E), (1, H, S, E), (1, H, S, E), (L, S)),
        lambda xs: _nbytes(*xs),
    ),
]
IDS = [e.name for e in ENTRIES]


def _inputs(entry: Entry, dtype: torch.dtype = torch.float64, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in entry.shapes]


def _cotangent(out: Tensor, seed: int = 2) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=g, dtype=out.dtype)


@pytest.fixture(params=ENTRIES, ids=IDS)
def entry(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Entry:
    if request.param.name.endswith(("_cut", "_cut_broadcast")):  # one batch row per part
        monkeypatch.setattr(_lean_attention, "_CHUNK", H * L * S)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_values_and_grads_match_torch(entry: Entry, dtype: torch.dtype) -> None:
    # float64 to rounding (1e-10); float32 sums of O(1) terms over a handful of keys (1e-5)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    xs = _inputs(entry, dtype)
    got, want = entry.fdl_fn(*xs), entry.torch_fn(*xs)
    torch.testing.assert_close(got, want, **tol)
    ct = _cotangent(got)
    g_got = torch.autograd.grad(got, xs, ct)
    g_want = torch.autograd.grad(want, xs, ct)
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_double_backward(entry: Entry) -> None:
    xs = _inputs(entry)
    assert torch.autograd.gradcheck(entry.fdl_fn, xs, fast_mode=True)
    assert torch.autograd.gradgradcheck(entry.fdl_fn, xs, fast_mode=True)


def test_forward_mode_matches_reference(entry: Entry) -> None:
    xs = [x.detach() for x in _inputs(entry)]
    ts = [t.detach() for t in _inputs(entry, seed=5)]
    out, tangent = torch.func.jvp(entry.fdl_fn, tuple(xs), tuple(ts))
    ref_out, ref_tangent = torch.func.jvp(entry.ref_fn, tuple(xs), tuple(ts))
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tangent, ref_tangent, rtol=1e-10, atol=1e-10)


def test_vmap_per_sample_grads_equal_a_loop(entry: Entry) -> None:
    """Every input batched on a new leading axis of 2 samples: vmap(grad) vs one grad each."""
    batched = [
        torch.stack([a.detach(), b.detach()])
        for a, b in zip(_inputs(entry), _inputs(entry, seed=3), strict=True)
    ]
    ct = _cotangent(entry.fdl_fn(*[x[0] for x in batched]))

    def loss(*xs: Tensor) -> Tensor:
        return (entry.fdl_fn(*xs) * ct).sum()

    argnums = tuple(range(len(batched)))
    got = torch.func.vmap(torch.func.grad(loss, argnums=argnums))(*batched)
    for i in range(2):
        xs = [x[i].clone().requires_grad_() for x in batched]
        want = torch.autograd.grad((entry.torch_fn(*xs) * ct).sum(), xs)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a[i], b, rtol=1e-10, atol=1e-10)


def _saved_bytes(out: Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``out``."""
    storages: dict[tuple[int, int], int] = {}
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        saved: list[Tensor] = []
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                values = value if isinstance(value, (tuple, list)) else (value,)
                saved += [t for t in values if isinstance(t, Tensor)]
        if hasattr(node, "saved_tensors"):
            saved += [t for t in node.saved_tensors if isinstance(t, Tensor)]
        for t in saved:
            st = t.untyped_storage()
            storages[(st.data_ptr(), st.nbytes())] = st.nbytes()
        stack += [fn for fn, _ in node.next_functions]
    return sum(storages.values())


def test_saved_bytes_within_bound(entry: Entry) -> None:
    """The backward keeps what its closed form needs (the plain formulas keep 2-4x more)."""
    xs = _inputs(entry, torch.float32)
    saved = _saved_bytes(entry.fdl_fn(*xs))
    bound = entry.saved(tuple(xs))
    assert saved <= bound, f"{entry.name}: autograd keeps {saved} bytes, the bound is {bound}"


def test_compiled_matches_eager_without_graph_break() -> None:
    """All entries in one ``fullgraph`` compile (the plain formulas): eager values and grads."""
    inputs = [_inputs(e) for e in ENTRIES]

    def run(*flat: Tensor) -> list[Tensor]:
        it = iter(flat)
        return [e.fdl_fn(*[next(it) for _ in e.shapes]) for e in ENTRIES]

    flat = [x for xs in inputs for x in xs]
    eager = run(*flat)
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")(*flat)
    cts = [_cotangent(o) for o in eager]
    g_eager = torch.autograd.grad(eager, flat, cts)
    g_compiled = torch.autograd.grad(compiled, flat, cts)
    for a, b in zip(compiled + list(g_compiled), eager + list(g_eager), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
