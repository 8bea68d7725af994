"""The time loop of a recurrent layer as one opaque operator, so compile time does not grow
with the sequence length.

``torch.compile`` unrolls a Python loop over time steps: the graph, and the compile time,
grow linearly with the sequence length. torch's ``scan`` higher-order op would keep one
step, but it does not run under ``torch.func.grad`` (which ``fdl.train`` uses). So the loop
over time is the custom operator ``fdl::recurrent_scan``: compiled graphs hold one node for
it whatever the length, and its body is the eager loop of
:mod:`fdl.nn._functional_recurrent` steps (the same gate equations).

Gradients: ``fdl::recurrent_scan_backward`` is backpropagation through time (the forward
pass is run twice): written out for an LSTM without projection, a GRU and an Elman RNN
(:func:`_lstm_backward`, :func:`_gru_backward`, :func:`_rnn_backward`); for an LSTM with
projection the loop is recomputed with autograd on and the vector-Jacobian product taken.
``vmap``: the forward folds a batch of inputs into the layer's batch axis when the weights
are shared; otherwise (batched weights, or the backward of per-example gradients) it runs
the operator once per batch entry. Double backward is not supported.
"""

from __future__ import annotations

from typing import Any

import torch

from fdl.nn import _functional_activations as _A
from fdl.nn import _functional_recurrent as _R

Tensor = torch.Tensor


def _loop(
    gi: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    mode: str,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``gi`` ``(L, N, G H)`` -> ``(outputs (L, N, H_out), h_n, c_n)``; LSTM only has ``c_n``."""
    steps: list[Tensor] = [gi.new_empty(0)] * gi.shape[0]
    h, c = h0, c0
    for t in range(gi.shape[0] - 1, -1, -1) if reverse else range(gi.shape[0]):
        if mode == "LSTM":
            h, c = _R.lstm_step(gi[t], h, c, w_hh, b_hh, w_hr)
        elif mode == "GRU":
            h = _R.gru_step(gi[t], h, w_hh, b_hh)
        else:
            h = _R.rnn_step(gi[t], h, w_hh, b_hh, "tanh" if mode == "RNN_TANH" else "relu")
        steps[t] = h
    c_n = c if mode == "LSTM" else h0.new_empty(0)
    return torch.stack(steps), h, c_n


def _lstm_forward(
    gi: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, b_hh: Tensor | None, reverse: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """LSTM without projection, saving what its backward needs: ``(out, acts, cells)``.

    The same gate equations as :func:`fdl.nn._functional_recurrent.lstm_step`, with each
    step's results written into buffers for all steps: per step, ``acts[t] = (sigmoid(i),
    sigmoid(f), tanh(g), sigmoid(o))`` from ``pre = gi[t] + b_hh + h W_hh^T`` (one GEMM
    that adds ``gi[t] + b_hh``), ``cells[t] = c' = f c + i g``, ``out[t] = h' = o tanh(c')``.
    ``gi`` ``(L, N, 4 H)`` -> ``out`` ``(L, N, H)``, ``acts`` ``(L, N, 4 H)``, ``cells``
    ``(L, N, H)``.
    """
    length, n, hid = gi.shape[0], gi.shape[1], h0.shape[-1]
    gib = gi + b_hh if b_hh is not None else gi  # (L, N, 4 H)
    w_t = w_hh.t()  # (H, 4 H)
    out = gi.new_empty(length, n, hid)  # (L, N, H): h_t
    acts = gi.new_empty(length, n, 4 * hid)  # (L, N, 4 H): i, f, g, o activated
    cells = gi.new_empty(length, n, hid)  # (L, N, H): c_t
    pre = gi.new_empty(n, 4 * hid)  # (N, 4 H): this step's pre-activations
    pre_g = pre[:, 2 * hid : 3 * hid]  # (N, H)
    tanh_c = gi.new_empty(n, hid)  # (N, H)
    # per-step views, made once (L-long lists of (N, *) views)
    gib_t, out_t, acts_t, cells_t = gib.unbind(0), out.unbind(0), acts.unbind(0), cells.unbind(0)
    i, f, g, o = (a.unbind(0) for a in acts.chunk(4, dim=-1))  # 4 x L x (N, H)
    h, c = h0, c0
    for t in range(length - 1, -1, -1) if reverse else range(length):
        torch.addmm(gib_t[t], h, w_t, out=pre)
        torch.sigmoid(pre, out=acts_t[t])
        torch.tanh(pre_g, out=g[t])
        torch.mul(f[t], c, out=cells_t[t])
        cells_t[t].addcmul_(i[t], g[t])
        torch.tanh(cells_t[t], out=tanh_c)
        torch.mul(o[t], tanh_c, out=out_t[t])
        h, c = out_t[t], cells_t[t]
    return out, acts, cells


_LIB = torch.library.Library("fdl", "FRAGMENT")
_LIB.define(
    "recurrent_scan(Tensor gi, Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hh, Tensor? w_hr, "
    "str mode, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_LIB.define(
    "recurrent_scan_backward(Tensor gi, Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hh, "
    "Tensor? w_hr, str mode, bool reverse, Tensor g_out, Tensor g_h, Tensor g_c, "
    "Tensor out, Tensor acts, Tensor cells) -> Tensor[]"
)


def _saves_gates(mode: str, w_hr: Tensor | None) -> bool:
    """Whether the forward saves its gates for the backward (an LSTM without projection)."""
    return mode == "LSTM" and w_hr is None


def _scan_impl(*inputs: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run the recurrence over every time step: ``(out, h_n, c_n, acts, cells)``.

    The arguments (the schema's) are :func:`_loop`'s. ``acts`` and ``cells`` are what the
    backward reuses (:func:`_lstm_forward`'s, for an LSTM without projection; empty
    otherwise, and the backward recomputes the forward).
    """
    gi, h0, c0, w_hh, b_hh, w_hr, mode, reverse = inputs
    with torch.no_grad():
        if _saves_gates(mode, w_hr) and gi.shape[0] > 0:
            out, acts, cells = _lstm_forward(gi, h0, c0, w_hh, b_hh, reverse)
            last = 0 if reverse else gi.shape[0] - 1
            return out, out[last].clone(), cells[last].clone(), acts, cells
        out, h, c = _loop(*inputs)
    empty = gi.new_empty(0)
    return out.clone(), h.clone(), c.clone(), empty, empty.clone()


@torch.library.register_fake("fdl::recurrent_scan")
def _(gi, h0, c0, w_hh, b_hh, w_hr, mode, reverse):  # type: ignore[no-untyped-def]
    h_out = w_hr.shape[0] if w_hr is not None else h0.shape[-1]
    out = gi.new_empty(gi.shape[0], gi.shape[1], h_out)
    c_n = c0.new_empty(c0.shape) if mode == "LSTM" else h0.new_empty(0)
    if _saves_gates(mode, w_hr) and gi.shape[0] > 0:
        acts, cells = gi.new_empty(gi.shape), gi.new_empty(gi.shape[0], gi.shape[1], h_out)
    else:
        acts, cells = gi.new_empty(0), gi.new_empty(0)
    return out, h0.new_empty(h0.shape), c_n, acts, cells


def _autograd_on() -> Any:
    """Re-enable autograd recording inside an operator kernel.

    The dispatcher runs a kernel below the autograd keys (and compiled code may call it
    from inside a dispatch mode), so the recomputed loop would record nothing; the guard
    takes the autograd keys out of the thread's exclude set for the recomputation.
    """
    include = torch._C._dispatch_tls_local_include_set()
    exclude = torch._C._dispatch_tls_local_exclude_set()
    exclude = exclude.remove(torch._C.DispatchKey.AutogradFunctionality)
    exclude = exclude.remove(torch._C.DispatchKey.ADInplaceOrView)
    return torch._C._ForceDispatchKeyGuard(include, exclude)


def _scan_backward_autograd(*args: Any) -> list[Tensor]:
    """Backpropagation through time by autograd: ``(d gi, d h0, d c0, d w_hh, d b_hh, d w_hr)``.

    The arguments are the schema's: those of :func:`_loop`, the cotangents of its three
    results, then the forward's saved tensors (unused here). Missing inputs (``b_hh``,
    ``w_hr``, ``c0`` outside LSTM) get empty gradients. The loop is recomputed with autograd
    on and ``torch.autograd.grad`` takes the vector-Jacobian product (the general path: GRU,
    RNN, LSTM with a projection).
    """
    gi, h0, c0, w_hh, b_hh, w_hr, mode, reverse, g_out, g_h, g_c = args[:11]
    inputs = [gi, h0, c0, w_hh, b_hh, w_hr]
    with _autograd_on(), torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_() for t in inputs]
        lstm = mode == "LSTM"
        out, h, c = _loop(*leaves, mode, reverse)  # type: ignore[arg-type]
        outs = [out, h] + ([c] if lstm else [])
        cts = [g_out, g_h] + ([g_c] if lstm else [])
        used = [t for t in leaves if t is not None and (lstm or t is not leaves[2])]
        grads = torch.autograd.grad(outs, used, cts, allow_unused=True)
    by_id = {id(t): g for t, g in zip(used, grads, strict=True)}
    result = []
    for t, leaf in zip(inputs, leaves, strict=True):
        if t is None or leaf is None or id(leaf) not in by_id:
            result.append(torch.zeros_like(t) if t is not None else gi.new_empty(0))
        else:
            g = by_id[id(leaf)]
            result.append(torch.zeros_like(t) if g is None else g)
    return result


def _lstm_backward(*args: Any) -> list[Tensor]:
    """Hand-written backpropagation through time of an LSTM without projection.

    Uses the forward's ``out``, ``acts`` (activated gates ``i, f, g, o``) and ``cells``
    (``c_t``), recomputed by :func:`_lstm_forward` when they are empty. With ``h_{t-1}``,
    ``c_{t-1}`` the previous step's, ``tc = tanh(c_t)``, the factors for all steps at once:
    ``p = o (1 - tc^2)``, ``q = (g i (1 - i), c_{t-1} f (1 - f), i (1 - g^2))``,
    ``r = tc o (1 - o)``. Then, from the last processed step back (``g_h``, ``g_c`` seed
    ``dh_rec``, ``dc_rec``): ``dh = g_out[t] + dh_rec``; ``dc = dh p + dc_rec``;
    ``dG_t = (dc q, dh r)`` (the pre-activation gradient, gate order ``i, f, g, o``)
    ``= d gi[t]``; ``dc_rec = dc f``; ``dh_rec = dG_t W_hh`` (one GEMM adding the next
    ``g_out``). Finally ``d W_hh = dG^T H_prev`` over all steps at once, ``d b_hh = sum dG``,
    ``d h0 = dh_rec``, ``d c0 = dc_rec``. Same arguments and results as
    :func:`_scan_backward_autograd` (plus the forward's three saved tensors).
    """
    gi, h0, c0, w_hh, b_hh, _w_hr, _mode, reverse, g_out, g_h, g_c, out, acts, cells = args
    length, n, hid = gi.shape[0], gi.shape[1], h0.shape[-1]
    order = list(range(length - 1, -1, -1)) if reverse else list(range(length))
    with torch.no_grad():
        if acts.numel() == 0:
            out, acts, cells = _lstm_forward(gi, h0, c0, w_hh, b_hh, reverse)
        # (L, N, H) each: the state before step t, in time order
        h_prev = torch.cat([out[1:], h0[None]]) if reverse else torch.cat([h0[None], out[:-1]])
        c_prev = torch.cat([cells[1:], c0[None]]) if reverse else torch.cat([c0[None], cells[:-1]])
        i, f, g, o = acts.chunk(4, dim=-1)  # 4 x (L, N, H)
        tc = _A.tanh(cells)  # (L, N, H)
        otc = o * tc  # (L, N, H)
        p = torch.addcmul(o, otc, tc, value=-1)  # o (1 - tc^2)
        r = torch.addcmul(otc, otc, o, value=-1)  # tc o (1 - o)
        q = gi.new_empty(length, n, 3, hid)  # (L, N, 3, H)
        torch.mul(torch.addcmul(i, i, i, value=-1), g, out=q[:, :, 0])  # g i (1 - i)
        torch.mul(torch.addcmul(f, f, f, value=-1), c_prev, out=q[:, :, 1])  # c_{t-1} f (1 - f)
        torch.addcmul(i, i * g, g, value=-1, out=q[:, :, 2])  # i (1 - g^2)
        d_gates = gi.new_empty(length, n, 4 * hid)  # (L, N, 4 H)
        # per-step views, made once: L-long lists of (N, 3, H), (N, H), (N, 4 H), ...
        d_ifg = d_gates.view(length, n, 4, hid)[:, :, :3].unbind(0)
        d_o = d_gates.view(length, n, 4, hid)[:, :, 3].unbind(0)
        d_t, g_out_t, f_t = d_gates.unbind(0), g_out.unbind(0), f.unbind(0)
        p_t, q_t, r_t = p.unbind(0), q.unbind(0), r.unbind(0)
        dh, dc_rec = g_out_t[order[-1]] + g_h, g_c
        for k, t in enumerate(reversed(order)):
            dc = torch.addcmul(dc_rec, dh, p_t[t])  # (N, H)
            torch.mul(dc.unsqueeze(1), q_t[t], out=d_ifg[t])
            torch.mul(dh, r_t[t], out=d_o[t])
            dc_rec = dc * f_t[t]
            if k + 1 < length:  # dh of the step processed before: g_out + dG_t W_hh
                dh = torch.addmm(g_out_t[order[length - 2 - k]], d_t[t], w_hh)  # (N, H)
        dh_rec = d_gates[order[0]] @ w_hh  # (N, H)
        flat = d_gates.reshape(length * n, 4 * hid)  # (L N, 4 H)
        d_whh = flat.t() @ h_prev.reshape(length * n, hid)  # (4 H, H)
        d_bhh = flat.sum(0) if b_hh is not None else gi.new_empty(0)
    return [d_gates, dh_rec, dc_rec.clone(), d_whh, d_bhh, gi.new_empty(0)]


def _gru_backward(*args: Any) -> list[Tensor]:
    """Hand-written backpropagation through time of a GRU.

    Forward, recomputed once without autograd, saving per step ``r, z, n``, ``gh_n`` and
    ``h_{t-1}``. Then, from the last processed step back (``g_h`` seeds ``dh_rec``):
    ``dh = g_out[t] + dh_rec``; ``dn = dh (1 - z) (1 - n^2)``; ``dz = dh (h_{t-1} - n) z (1 - z)``;
    ``dr = dn gh_n r (1 - r)``; ``d gi[t] = (dr, dz, dn)``; ``d gh_t = (dr, dz, dn r)``;
    ``dh_rec = dh z + d gh_t W_hh``. Finally ``d W_hh = d gh^T H_prev`` over all steps at
    once, ``d b_hh = sum d gh``, ``d h0 = dh_rec``. Same arguments and results as
    :func:`_scan_backward_autograd`.
    """
    gi, h0, c0, w_hh, b_hh, _w_hr, _mode, reverse, g_out, g_h, _g_c = args[:11]
    length, n_batch, hid = gi.shape[0], gi.shape[1], h0.shape[-1]
    order = list(range(length - 1, -1, -1)) if reverse else list(range(length))
    with torch.no_grad():
        saved = gi.new_empty(length, n_batch, 4 * hid)  # (L, N, 4 H): r, z, n, gh_n
        h_prev = gi.new_empty(length, n_batch, hid)  # (L, N, H): h_{t-1}
        h = h0
        for t in order:
            r, z, n, gh_n = _R.gru_gates(gi[t], h, w_hh, b_hh)  # 4 x (N, H)
            h_prev[t] = h
            saved[t] = torch.cat([r, z, n, gh_n], dim=-1)
            h = (1 - z) * n + z * h
        d_gi = gi.new_empty(length, n_batch, 3 * hid)  # (L, N, 3 H)
        d_gh = gi.new_empty(length, n_batch, 3 * hid)  # (L, N, 3 H)
        dh_rec = g_h
        for t in reversed(order):
            r, z, n, gh_n = saved[t].chunk(4, dim=-1)  # 4 x (N, H)
            dh = g_out[t] + dh_rec
            dn = dh * (1 - z) * (1 - n * n)
            dz = dh * (h_prev[t] - n) * z * (1 - z)
            dr = dn * gh_n * r * (1 - r)
            d_gi[t] = torch.cat([dr, dz, dn], dim=-1)
            d_gh[t] = torch.cat([dr, dz, dn * r], dim=-1)
            dh_rec = dh * z + d_gh[t] @ w_hh  # (N, H)
        flat = d_gh.reshape(length * n_batch, 3 * hid)  # (L N, 3 H)
        d_whh = flat.t() @ h_prev.reshape(length * n_batch, hid)  # (3 H, H)
        d_bhh = flat.sum(0) if b_hh is not None else gi.new_empty(0)
    return [d_gi, dh_rec.clone(), torch.zeros_like(c0), d_whh, d_bhh, gi.new_empty(0)]


def _rnn_backward(*args: Any) -> list[Tensor]:
    """Hand-written backpropagation through time of an Elman RNN (``tanh`` or ``relu``).

    Forward, recomputed once without autograd, saving every ``h_t``. Then, from the last
    processed step back (``g_h`` seeds ``dh_rec``): ``dh = g_out[t] + dh_rec``;
    ``d pre = dh (1 - h_t^2)`` (``tanh``) or ``dh [h_t > 0]`` (``relu``) ``= d gi[t]``;
    ``dh_rec = d pre W_hh``. Finally ``d W_hh = d pre^T H_prev`` over all steps at once,
    ``d b_hh = sum d pre``, ``d h0 = dh_rec``. Same arguments and results as
    :func:`_scan_backward_autograd`.
    """
    gi, h0, c0, w_hh, b_hh, _w_hr, mode, reverse, g_out, g_h, _g_c = args[:11]
    length, n_batch, hid = gi.shape[0], gi.shape[1], h0.shape[-1]
    order = list(range(length - 1, -1, -1)) if reverse else list(range(length))
    nonlinearity = "tanh" if mode == "RNN_TANH" else "relu"
    with torch.no_grad():
        h_prev = gi.new_empty(length, n_batch, hid)  # (L, N, H): h_{t-1}
        h_all = gi.new_empty(length, n_batch, hid)  # (L, N, H): h_t
        h = h0
        for t in order:
            h_prev[t] = h
            h = _R.rnn_step(gi[t], h, w_hh, b_hh, nonlinearity)
            h_all[t] = h
        slope = 1 - h_all * h_all if nonlinearity == "tanh" else (h_all > 0).to(gi.dtype)
        d_pre = gi.new_empty(length, n_batch, hid)  # (L, N, H)
        dh_rec = g_h
        for t in reversed(order):
            d_pre[t] = (g_out[t] + dh_rec) * slope[t]
            dh_rec = d_pre[t] @ w_hh  # (N, H)
        flat = d_pre.reshape(length * n_batch, hid)  # (L N, H)
        d_whh = flat.t() @ h_prev.reshape(length * n_batch, hid)  # (H, H)
        d_bhh = flat.sum(0) if b_hh is not None else gi.new_empty(0)
    return [d_pre, dh_rec.clone(), torch.zeros_like(c0), d_whh, d_bhh, gi.new_empty(0)]


def _scan_backward_impl(*args: Any) -> list[Tensor]:
    """Backpropagation through time: ``(d gi, d h0, d c0, d w_hh, d b_hh, d w_hr)``.

    Written out (one forward recomputation without autograd, then one reverse loop of
    matmuls): :func:`_lstm_backward` for an LSTM without projection, :func:`_gru_backward`,
    :func:`_rnn_backward`; an LSTM with projection takes the autograd recomputation
    :func:`_scan_backward_autograd`.
    """
    mode, w_hr = args[6], args[5]
    if mode == "LSTM":
        return _lstm_backward(*args) if w_hr is None else _scan_backward_autograd(*args)
    return _gru_backward(*args) if mode == "GRU" else _rnn_backward(*args)


@torch.library.register_fake("fdl::recurrent_scan_backward")
def _(gi, h0, c0, w_hh, b_hh, w_hr, mode, reverse, g_out, g_h, g_c, out, acts, cells):  # type: ignore[no-untyped-def]
    return [
        t.new_empty(t.shape) if t is not None else gi.new_empty(0)
        for t in (gi, h0, c0, w_hh, b_hh, w_hr)
    ]


# CompositeExplicitAutograd: a kernel for every device and no autograd kernel (autograd and
# torch.func go through _Scan below, which calls the operators with gradients off)
_LIB.impl("recurrent_scan", _scan_impl, "CompositeExplicitAutograd")
_LIB.impl("recurrent_scan_backward", _scan_backward_impl, "CompositeExplicitAutograd")
recurrent_scan = torch.ops.fdl.recurrent_scan.default
recurrent_scan_backward = torch.ops.fdl.recurrent_scan_backward.default


class _Scan(torch.autograd.Function):
    """Autograd (and, through the operators' vmap rules, ``torch.func``) for the scan."""

    generate_vmap_rule = True

    @staticmethod
    def forward(gi, h0, c0, w_hh, b_hh, w_hr, mode, reverse):  # type: ignore[no-untyped-def]
        return recurrent_scan(gi, h0, c0, w_hh, b_hh, w_hr, mode, reverse)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        gi, h0, c0, w_hh, b_hh, w_hr, mode, reverse = inputs
        out, _, _, acts, cells = output
        ctx.save_for_backward(gi, h0, c0, w_hh, b_hh, w_hr, out, acts, cells)
        ctx.mark_non_differentiable(acts, cells)
        ctx.mode, ctx.reverse = mode, reverse
        ctx.has = (b_hh is not None, w_hr is not None)

    @staticmethod
    def backward(ctx: Any, g_out: Tensor, g_h: Tensor, g_c: Tensor, *_saved: Any) -> tuple:  # type: ignore[override]
        gi, h0, c0, w_hh, b_hh, w_hr, out, acts, cells = ctx.saved_tensors
        d_gi, d_h0, d_c0, d_whh, d_bhh, d_whr = recurrent_scan_backward(
            gi, h0, c0, w_hh, b_hh, w_hr, ctx.mode, ctx.reverse, g_out, g_h, g_c, out, acts, cells
        )
        return (
            d_gi, d_h0, d_c0 if ctx.mode == "LSTM" else None, d_whh,
            d_bhh if ctx.has[0] else None, d_whr if ctx.has[1] else None, None, None,
        )  # fmt: skip


def scan(*inputs: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Differentiable, vmappable :func:`recurrent_scan`; the arguments are :func:`_loop`'s."""
    out, h, c, _, _ = _Scan.apply(*inputs)
    return out, h, c


def _move(t: Tensor | None, d: int | None, size: int) -> Tensor | None:
    """Batch axis first (expanded when the argument is not batched)."""
    if t is None:
        return None
    if d is None:
        return t.unsqueeze(0).expand(size, *t.shape)
    return t.movedim(d, 0)


def _per_entry(op: Any, info: Any, in_dims: tuple, args: tuple) -> tuple[Any, Any]:
    """vmap by running ``op`` once per batch entry and stacking (always correct)."""
    size = info.batch_size
    moved = [
        _move(a, d, size) if isinstance(a, Tensor) else a
        for a, d in zip(args, in_dims, strict=True)
    ]
    results = []
    for b in range(size):
        sliced = [m[b] if isinstance(m, Tensor) else m for m in moved]
        results.append(op(*sliced))
    stacked = [torch.stack(parts) for parts in zip(*results, strict=True)]
    return (tuple(stacked) if isinstance(results[0], tuple) else stacked), (
        (0,) * len(stacked) if isinstance(results[0], tuple) else [0] * len(stacked)
    )


@torch.library.register_vmap("fdl::recurrent_scan")
def _scan_vmap(info, in_dims, gi, h0, c0, w_hh, b_hh, w_hr, mode, reverse):  # type: ignore[no-untyped-def]
    args = (gi, h0, c0, w_hh, b_hh, w_hr, mode, reverse)
    shared_weights = all(d is None for d in in_dims[3:6])
    size = info.batch_size
    if shared_weights:
        # fold the vmapped axis into the layer's batch axis: (B, L, N, G) -> (L, B N, G)
        g = _move(gi, in_dims[0], size)
        assert g is not None
        length, n = g.shape[1], g.shape[2]
        g = g.movedim(0, 1).reshape(length, size * n, -1)  # (L, B N, G H)
        h = _move(h0, in_dims[1], size).reshape(size * n, -1)  # type: ignore[union-attr]
        c = _move(c0, in_dims[2], size).reshape(size * n, -1) if mode == "LSTM" else c0  # type: ignore[union-attr]
        out, h_n, c_n, acts, cells = recurrent_scan(g, h, c, w_hh, b_hh, w_hr, mode, reverse)
        out = out.reshape(length, size, n, -1)  # (L, B, N, H_out)
        h_n = h_n.reshape(size, n, -1)  # (B, N, H_out)
        c_n = c_n.reshape(size, n, -1) if mode == "LSTM" else c_n.expand(size, 0)
        saved = [
            t.reshape(length, size, n, -1) if t.numel() else t.expand(size, 0)
            for t in (acts, cells)
        ]  # (L, B, N, 4 H), (L, B, N, H), or empty
        dims = [1 if t.numel() else 0 for t in (acts, cells)]
        return (out, h_n, c_n, *saved), (1, 0, 0, *dims)
    return _per_entry(recurrent_scan, info, in_dims, args)


@torch.library.register_vmap("fdl::recurrent_scan_backward")
def _backward_vmap(info, in_dims, *args):  # type: ignore[no-untyped-def]
    return _per_entry(recurrent_scan_backward, info, in_dims, args)
