"""Per-sample gradient rules for linear and convolution layers.

For a layer ``out = op(a, W) + b`` applied to a batch, the gradient of the
loss with respect to ``W`` is a sum over examples (and positions) of outer
products of the output gradient ``g`` and the input activation ``a``. Keeping
the two factors apart gives each example's gradient, its squared norm and any
weighted sum over examples without running a backward pass per example:

* linear, ``a: (B, T, in)``, ``g: (B, T, out)``:
  ``grad_W[i] = Σ_t g[i, t]ᵀ a[i, t]`` and ``grad_b[i] = Σ_t g[i, t]``;
  ``‖grad_W[i]‖² = Σ_{t,s} (a[i,t]·a[i,s]) (g[i,t]·g[i,s])`` (Gram form, used when
  ``T²(in + out) < T·in·out``; with ``T = 1`` it is ``‖a[i]‖²‖g[i]‖²``).
* convolution: the same with ``a`` unfolded into patches (im2col),
  ``A[i]: (C_in·k, L)`` and ``G[i]: (C_out, L)`` over the ``L`` output positions,
  per group.
* ``Σ_i w[i] grad_W[i]`` is the ordinary weight gradient of the output
  gradient ``w[i]·g[i]``: one matmul (linear) or one convolution-weight
  backward (conv), the cost of a normal batch gradient.

:class:`Recorder` is a ``TorchFunctionMode`` that intercepts
``torch.nn.functional.linear``, ``conv1d`` and ``conv2d`` when their weight is
one of the parameters being differentiated, runs them on detached parameters
(so the parameters themselves stay out of the autograd graph) and keeps the
input and the output tensor of each call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch.nn.grad
from torch.overrides import TorchFunctionMode

from fdl._per_sample import elementwise as _elementwise
from fdl._per_sample import embedding as _embedding
from fdl._per_sample import marks as _marks
from fdl._per_sample import views as _views

_LINEAR = F.linear
_CONVS = {F.conv1d: 1, F.conv2d: 2}
_EMBEDDING = F.embedding
# elementwise products and sums that may broadcast a parameter over a batch (norm affines)
_SCALES = frozenset({torch.Tensor.__mul__, torch.Tensor.__rmul__, torch.Tensor.mul, torch.mul})
_SHIFTS = frozenset({torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.add, torch.add})


def _pair(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    t = tuple(int(e) for e in v)
    return t * n if len(t) == 1 else t


@dataclass
class Record:
    """One intercepted layer call: its input, output and parameter slots.

    ``weight``/``bias`` index :attr:`Recorder.slots` (a parameter or a view of one).
    """

    kind: str  # "linear", "conv", "embedding", "scale" or "shift"
    weight: int  # slot of the weight (the table of an embedding, the broadcast parameter)
    bias: int | None  # slot of the bias, if any
    a: torch.Tensor  # the layer input (detached; the indices of an embedding)
    # the layer output; recorded for autograd ("graph"), a meta tensor of its shape and dtype
    out: torch.Tensor
    weight_shape: tuple[int, ...] = ()
    nd: int = 0  # spatial dims of a conv (1 or 2)
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    padding_idx: int | None = None  # embedding: the row that gets no gradient
    # per-example output grad: None only until core._record sets it, before any rule reads it
    g: torch.Tensor = field(default=None, repr=False)  # type: ignore[assignment]
    gw: torch.Tensor | None = field(default=None, repr=False)  # per-example weight grads, if formed
    edge: Any = field(default=None, repr=False)  # "graph": the output's autograd edge


def _as_graph_node(out: torch.Tensor) -> torch.Tensor:
    """A first layer on plain data gives an output outside the graph: add a zero leaf to it.

    ``out + 0`` with a tracked 0-d zero rather than ``out`` made a leaf: a leaf's
    graph edge holds the leaf, an addition's holds nothing, so the output is freed
    as soon as the forward no longer needs it.
    """
    if out.requires_grad:
        return out
    return out + torch.zeros((), dtype=out.dtype, device=out.device, requires_grad=True)


# F.embedding's parameters in order (bound by hand: Dynamo does not trace inspect.signature)
_EMBEDDING_PARAMS = (
    "input", "weight", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse",
)  # fmt: skip


def _bind_embedding(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """``F.embedding``'s arguments by name, or ``None`` if they do not bind."""
    if len(args) > len(_EMBEDDING_PARAMS) or any(k not in _EMBEDDING_PARAMS for k in kwargs):
        return None
    bound = dict(zip(_EMBEDDING_PARAMS, args, strict=False))
    if any(k in bound for k in kwargs):
        return None
    bound.update(kwargs)
    return bound if "input" in bound and "weight" in bound else None


class Recorder(TorchFunctionMode):
    """Intercept layer calls whose parameters (or views of them) are tracked.

    ``slots`` starts with one :class:`~fdl._per_sample.views.Slot` per
    parameter leaf; a view of a tracked tensor (``chunk``, ``reshape``,
    slicing) adds a slot. A view is computed on the tracked tensor itself, so a
    use of it that no rule intercepts still reaches the parameter in the
    autograd graph (and the rules path then refuses). While it is active, a
    layer marked ``vmap``-only (:func:`fdl._per_sample.marks.vmap_only`) raises
    :class:`fdl._per_sample.marks.VmapOnly`.

    ``outputs`` says what a recorded call hands on: ``"graph"`` (eager: the
    output made a graph node, for ``torch.autograd.grad``), ``"probe"`` (the
    output as computed, outside the graph) or ``"perturb"`` (``out +
    perturb[k]`` for the ``k``-th call); the last two serve
    :func:`fdl._per_sample.core.record_traced`.
    """

    def __init__(
        self,
        params: list[torch.Tensor],
        *,
        outputs: str = "graph",
        perturb: list[torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.outputs = outputs
        self.perturb = perturb
        self.slots = [_views.Slot(i, tuple(p.shape)) for i, p in enumerate(params)]
        self.ids = {id(p): i for i, p in enumerate(params)}
        self._alive: list[torch.Tensor] = list(params)  # slot i's tensor; keeps its id in use
        self.records: list[Record] = []

    def __enter__(self) -> Recorder:
        _marks.ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        _marks.ACTIVE.remove(self)

    def _emit(self, out: torch.Tensor) -> torch.Tensor:
        """The output a recorded call hands on, by :attr:`outputs` (before its record is kept)."""
        if self.outputs == "perturb":
            return out + self.perturb[len(self.records)]  # type: ignore[index]
        return out if self.outputs == "probe" else _as_graph_node(out)

    def _keep(self, r: Record) -> None:
        """Keep ``r``; for autograd (``"graph"``) only the output's edge and shape.

        ``torch.autograd.grad`` reaches the output's gradient through its graph
        edge, which does not hold the output: the output is freed as soon as
        the forward no longer needs it (a ReLU keeps its own output, not its
        input), instead of staying alive until the backward.
        """
        if self.outputs == "graph":
            r.edge = torch.autograd.graph.get_gradient_edge(r.out)
            r.out = torch.empty(r.out.shape, dtype=r.out.dtype, device="meta")
        self.records.append(r)

    def _slot(self, t: Any) -> int | None:
        if not isinstance(t, torch.Tensor):
            return None
        if torch.compiler.is_compiling():  # id() would guard on the input object: compare by `is`
            return next((i for i, s in enumerate(self._alive) if s is t), None)
        return self.ids.get(id(t))

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        rec = None
        if func is _LINEAR:
            rec = self._linear(*args, **kwargs)
        elif func in _CONVS:
            rec = self._conv(_CONVS[func], func, *args, **kwargs)
        elif func is _EMBEDDING:
            rec = self._embedding(args, kwargs)
        elif func in _SCALES or func in _SHIFTS:
            rec = self._broadcast("scale" if func in _SCALES else "shift", func, args, kwargs)
        elif args and _views.is_view_call(func, args) and self._slot(args[0]) is not None:
            return self._view(func, args, kwargs)
        if rec is None:
            return func(*args, **kwargs)
        return rec

    def _view(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A view of a tracked tensor: a new slot per resulting tensor."""
        parent = self._slot(args[0])
        assert parent is not None
        out = func(*args, **kwargs)
        rest = args[1:]
        pieces = list(out) if isinstance(out, tuple | list) else [out]
        for k, piece in enumerate(pieces):
            pick = k if isinstance(out, tuple | list) else None

            def f(p: torch.Tensor, pick: int | None = pick) -> torch.Tensor:
                o = func(p, *rest, **kwargs)
                return o if pick is None else o[pick]

            slot = _views.Slot(self.slots[parent].param, tuple(piece.shape), parent, f)
            self.ids[id(piece)] = len(self.slots)
            self.slots.append(slot)
            self._alive.append(piece)
        return out

    def _linear(self, x: Any, weight: Any, bias: Any = None) -> torch.Tensor | None:
        w_slot, b_slot = self._slot(weight), self._slot(bias)
        if w_slot is None or (bias is not None and b_slot is None):
            return None
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            return None
        out = _LINEAR(x, weight.detach(), None if bias is None else bias.detach())
        out = self._emit(out)
        self._keep(Record("linear", w_slot, b_slot, x.detach(), out))
        return out

    def _embedding(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        """``F.embedding`` without ``max_norm``/``scale_grad_by_freq``/``sparse``."""
        bound = _bind_embedding(args, kwargs)
        if bound is None:
            return None
        idx, weight = bound["input"], bound["weight"]
        w_slot = self._slot(weight)
        if w_slot is None or not isinstance(idx, torch.Tensor) or idx.dim() < 1:
            return None
        if (
            bound.get("max_norm") is not None
            or bound.get("scale_grad_by_freq")
            or bound.get("sparse")
        ):
            return None  # gradients that depend on the batch (frequencies) or renormalised rows
        pad = bound.get("padding_idx")
        if pad is not None and pad < 0:
            pad += weight.shape[0]
        out = self._emit(_EMBEDDING(idx, weight.detach(), pad))
        self._keep(
            Record(
                "embedding", w_slot, None, idx.detach(), out,
                weight_shape=tuple(weight.shape), padding_idx=pad,
            )
        )  # fmt: skip
        return out

    def _broadcast(
        self, kind: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> torch.Tensor | None:
        """``a * w`` or ``a + w`` with ``w`` a tracked tensor broadcast over a batched ``a``."""
        if len(args) != 2 or kwargs:
            return None  # e.g. add(..., alpha=2)
        slots = [self._slot(t) for t in args]
        if (slots[0] is None) == (slots[1] is None):
            return None  # no parameter, or a product of two parameters
        w, a = (args[0], args[1]) if slots[0] is not None else (args[1], args[0])
        w_slot = slots[0] if slots[0] is not None else slots[1]
        if not isinstance(a, torch.Tensor) or self._slot(a) is not None or a.dim() < 1:
            return None
        if w.dim() > a.dim() or (w.dim() == a.dim() and w.shape[0] != 1):
            return None  # the parameter would vary along (or add) the batch axis
        out = func(a, w.detach())  # commutative: a first
        if out.shape != a.shape:
            return None
        out = self._emit(out)
        self._keep(
            Record(kind, w_slot, None, a.detach(), out, weight_shape=tuple(w.shape))  # type: ignore[arg-type]
        )
        return out

    def _conv(
        self,
        nd: int,
        func: Any,
        x: Any,
        weight: Any,
        bias: Any = None,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
    ) -> torch.Tensor | None:
        w_slot, b_slot = self._slot(weight), self._slot(bias)
        if w_slot is None or (bias is not None and b_slot is None):
            return None
        if not isinstance(x, torch.Tensor) or x.dim() != nd + 2:
            return None
        ksize = tuple(weight.shape[2:])
        stride_t, dil_t = _pair(stride, nd), _pair(dilation, nd)
        if isinstance(padding, str):
            if padding == "valid":
                pad_t = (0,) * nd
            elif padding == "same":
                totals = [d * (k - 1) for d, k in zip(dil_t, ksize, strict=True)]
                if any(t % 2 for t in totals):
                    return None  # asymmetric padding: no rule
                pad_t = tuple(t // 2 for t in totals)
            else:
                return None
        else:
            pad_t = _pair(padding, nd)
        out = func(
            x,
            weight.detach(),
            None if bias is None else bias.detach(),
            stride,
            padding,
            dilation,
            groups,
        )
        out = self._emit(out)
        self._keep(
            Record(
                "conv",
                w_slot,
                b_slot,
                x.detach(),
                out,
                weight_shape=tuple(weight.shape),
                nd=nd,
                stride=stride_t,
                padding=pad_t,
                dilation=dil_t,
                groups=int(groups),
            )
        )
        return out


# ---------------------------------------------------------------------------
# per-record computations (g is the per-example output gradient)
# ---------------------------------------------------------------------------


def _linear_factors(r: Record) -> tuple[torch.Tensor, torch.Tensor]:
    b = r.a.shape[0]
    a = r.a.reshape(b, -1, r.a.shape[-1])  # (B, T, in)
    g = r.g.reshape(b, -1, r.g.shape[-1])  # (B, T, out)
    return a, g


def _im2col(
    x: torch.Tensor,
    k: tuple[int, ...],
    stride: tuple[int, ...],
    pad: tuple[int, ...],
    dil: tuple[int, ...],
) -> torch.Tensor:
    """Patches of a 2-d convolution, ``(B, C·kh·kw, L)`` in ``F.unfold``'s order.

    Built from strided views (``Tensor.unfold``) and one copy, which is much
    faster on a CPU than ``F.unfold``.
    """
    if any(pad):
        x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
    span = [d * (kk - 1) + 1 for d, kk in zip(dil, k, strict=True)]
    v = x.unfold(2, span[0], stride[0]).unfold(3, span[1], stride[1])  # (B, C, Ho, Wo, sh, sw)
    if dil[0] > 1 or dil[1] > 1:
        v = v[..., :: dil[0], :: dil[1]]  # (B, C, Ho, Wo, kh, kw)
    b, c, ho, wo = v.shape[:4]
    return v.permute(0, 1, 4, 5, 2, 3).reshape(b, c * k[0] * k[1], ho * wo)


def _conv_factors(r: Record) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches ``A: (B, groups, C_in/groups·k, L)`` and ``G: (B, groups, C_out/groups, L)``."""
    x = r.a
    k = r.weight_shape[2:]
    if r.nd == 1:
        x = x.unsqueeze(2)
        k, stride, pad, dil = (1, *k), (1, *r.stride), (0, *r.padding), (1, *r.dilation)
    else:
        stride, pad, dil = r.stride, r.padding, r.dilation
    cols = _im2col(x, k, stride, pad, dil)  # (B, C_in·k, L)
    b, l_out = cols.shape[0], cols.shape[-1]
    a = cols.reshape(b, r.groups, -1, l_out)
    g = r.g.reshape(b, r.groups, -1, l_out)
    return a, g


def weight_per_sample(r: Record) -> torch.Tensor:
    """``(B, *weight.shape)`` per-example weight gradients."""
    if r.gw is not None:
        return r.gw
    if r.kind == "embedding":
        return _embedding.per_sample(r.a, r.g, r.padding_idx, r.weight_shape[0])
    if r.kind in ("scale", "shift"):
        return _elementwise.per_sample(r.kind, r.a, r.g, r.weight_shape)
    if r.kind == "linear":
        a, g = _linear_factors(r)
        if a.shape[1] == 1:  # no sequence axis: an outer product per example
            return g[:, 0, :, None] * a[:, 0, None, :]  # (B, out, in)
        return torch.bmm(g.transpose(1, 2), a)  # (B, out, in)
    if r.a.dtype == torch.float32 and r.a.device.type == "cpu":
        return _conv_weight_grouped(r)
    a, g = _conv_factors(r)
    gw = torch.einsum("bgol,bgil->bgoi", g, a)  # (B, groups, C_out/groups, C_in/groups·k)
    return gw.reshape(gw.shape[0], *r.weight_shape)


# per-example conv weight gradients formed at once, in elements (4 MiB of float32): a
# larger batch is done in row chunks, as oneDNN's weight gradient briefly needs more
# than twice its output
CONV_CHUNK_ELEMS = 1 << 20


def _conv_weight_grouped(r: Record) -> torch.Tensor:
    """Per-example conv weight gradients as one grouped convolution's weight gradient.

    Stacking the ``B`` examples along the channels (``(1, B·C_in, H, W)``) and
    making each example a group (``groups = B·groups``) turns the ``B``
    per-example weight gradients into the weight gradient of a single grouped
    convolution. oneDNN computes it without the im2col copy (about 1.4x faster
    than patches and a batched matmul for the document's CNN at batch 64 on a
    CPU, float32; other dtypes keep the matmul, which torch's fallback
    kernels beat for many groups). Rows go in even chunks of at most
    ``CONV_CHUNK_ELEMS`` result elements, written into one ``(B, *weight.shape)``
    result.
    """
    x, g = r.a, r.g
    k, stride, pad, dil = r.weight_shape[2:], r.stride, r.padding, r.dilation
    if r.nd == 1:
        x, g = x.unsqueeze(2), g.unsqueeze(2)
        k, stride, pad, dil = (1, *k), (1, *stride), (0, *pad), (1, *dil)
    b = x.shape[0]
    chunks = -(-b * math.prod(r.weight_shape) // CONV_CHUNK_ELEMS)  # ceil
    rows = -(-b // max(chunks, 1))  # even chunks of at most CONV_CHUNK_ELEMS elements
    if rows >= b:
        return _grouped_weight_grad(x, g, r.weight_shape, k, stride, pad, dil, r.groups)
    out = x.new_empty((b, *r.weight_shape))  # (B, C_out, C_in/groups, *k)
    for s in range(0, b, rows):
        part = _grouped_weight_grad(
            x[s : s + rows], g[s : s + rows], r.weight_shape, k, stride, pad, dil, r.groups
        )
        out[s : s + rows] = part  # a fresh buffer of this function's own
    return out


def _grouped_weight_grad(
    x: torch.Tensor,
    g: torch.Tensor,
    weight_shape: tuple[int, ...],
    k: tuple[int, ...],
    stride: tuple[int, ...],
    pad: tuple[int, ...],
    dil: tuple[int, ...],
    groups: int,
) -> torch.Tensor:
    """``(b, *weight_shape)`` weight gradients of the ``b`` examples of ``x``, ``g`` (2-d)."""
    b, c_out, c_in_g = x.shape[0], weight_shape[0], weight_shape[1]
    xs = x.reshape(1, b * x.shape[1], *x.shape[2:])  # (1, b·C_in, H, W)
    gs = g.reshape(1, b * c_out, *g.shape[2:])  # (1, b·C_out, H_out, W_out)
    w = x.new_empty(()).expand(b * c_out, c_in_g, *k)  # only its shape is read: no storage
    _, gw, _ = torch.ops.aten.convolution_backward(
        gs, xs, w, None, stride, pad, dil, False, (0,) * 2, b * groups, [False, True, False]
    )
    return gw.reshape(b, *weight_shape)  # (b, C_out, C_in/groups, *k)


def bias_per_sample(r: Record) -> torch.Tensor:
    """``(B, C_out)`` per-example bias gradients."""
    if r.kind == "linear":
        return r.g.reshape(r.g.shape[0], -1, r.g.shape[-1]).sum(1)
    return r.g.reshape(r.g.shape[0], r.g.shape[1], -1).sum(-1)


def _gram_sq_norms(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``Σ_{t,s} (a_t·a_s)(g_t·g_s)`` per example; ``a: (B, T, n)``, ``g: (B, T, m)``."""
    return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))


def weight_sq_norms(r: Record) -> torch.Tensor:
    """``(B,)`` squared Frobenius norms of the per-example weight gradients."""
    if r.kind == "embedding":
        return _embedding.sq_norms(r.a, r.g, r.padding_idx, r.weight_shape[0])
    if r.kind in ("scale", "shift"):  # parameter-sized per-example gradients: keep them
        r.gw = weight_per_sample(r)
        return r.gw.flatten(1).square().sum(1)
    if r.kind == "linear":
        a, g = _linear_factors(r)
        t, n_in, n_out = a.shape[1], a.shape[2], g.shape[2]
        if t == 1:
            return a.square().sum((1, 2)) * g.square().sum((1, 2))
        if t * t * (n_in + n_out) < t * n_in * n_out:
            return _gram_sq_norms(a, g)
        return torch.bmm(g.transpose(1, 2), a).square().sum((1, 2))
    n_k = math.prod(r.weight_shape[1:])  # C_in/groups·k: rows of a group's patches
    n_out = r.weight_shape[0] // r.groups
    l_out = math.prod(r.g.shape[2:])  # output positions
    if r.groups == 1 and l_out * l_out * (n_k + n_out) < l_out * n_k * n_out:
        a, g = _conv_factors(r)  # the patches only where the Gram form reads them
        return _gram_sq_norms(a[:, 0].transpose(1, 2), g[:, 0].transpose(1, 2))
    # a convolution's per-example gradients are small: keep them for weighted sums
    r.gw = weight_per_sample(r)
    return r.gw.flatten(1).square().sum(1)


def weight_weighted_sum(r: Record, w: torch.Tensor) -> torch.Tensor:
    """``Σ_i w[i] grad_W[i]``: from kept per-example gradients, else one weight-gradient pass."""
    if r.gw is not None:
        return torch.tensordot(w.to(r.gw.dtype), r.gw, dims=1)
    if r.kind == "embedding":
        return _embedding.weighted_sum(r.a, r.g, r.padding_idx, r.weight_shape[0], w)
    if r.kind in ("scale", "shift"):
        return torch.tensordot(w.to(r.g.dtype), weight_per_sample(r), dims=1)
    shape = (-1,) + (1,) * (r.g.dim() - 1)
    gw = r.g * w.reshape(shape).to(r.g.dtype)
    if r.kind == "linear":
        return gw.reshape(-1, gw.shape[-1]).T @ r.a.reshape(-1, r.a.shape[-1])
    fn = torch.nn.grad.conv1d_weight if r.nd == 1 else torch.nn.grad.conv2d_weight
    return fn(r.a, r.weight_shape, gw, r.stride, r.padding, r.dilation, r.groups)


def bias_weighted_sum(r: Record, w: torch.Tensor) -> torch.Tensor:
    """``Σ_i w[i] grad_b[i]``."""
    return w.to(r.g.dtype) @ bias_per_sample(r)
