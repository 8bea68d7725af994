"""Per-sample gradient representations and the two ways of computing them.

Shared by :mod:`fdl.per_sample` (per-example gradients and norms) and
:mod:`fdl.privacy` (clipped sums), which is why it lives outside both.

A representation answers three questions about the per-example gradients
``grad_i`` of a batch without committing to how they are stored:
``materialize()`` (every leaf as ``(B, *shape)``), ``sq_norms()`` (``‖grad_i‖²``
over the whole pytree) and ``weighted_sum(w)`` (``Σ_i w[i] grad_i``).

* :class:`Dense` holds materialised per-example gradients (the ``vmap`` path).
* :class:`Factored` holds the factors of linear/conv layers recorded by
  :class:`fdl._per_sample.rules.Recorder` (the ``rules`` path).
* :class:`Chunked` concatenates representations of consecutive sub-batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch

from fdl import tree as _tree
from fdl._per_sample import marks as _marks
from fdl._per_sample import rules as _rules
from fdl._per_sample import views as _views

LossFn = Callable[..., Any]


class NoRule(Exception):
    """The rules path does not apply; the message says why."""


# ---------------------------------------------------------------------------
# representations
# ---------------------------------------------------------------------------


class Dense:
    """Materialised per-example gradients, one ``(B, *shape)`` tensor per leaf."""

    def __init__(self, leaves: list[torch.Tensor]) -> None:
        self.leaves = leaves

    def materialize(self) -> list[torch.Tensor]:
        return self.leaves

    def sq_norms(self) -> torch.Tensor:
        return cast(torch.Tensor, sum(leaf.flatten(1).square().sum(1) for leaf in self.leaves))

    def weighted_sum(self, w: torch.Tensor) -> list[torch.Tensor]:
        return [torch.tensordot(w.to(leaf.dtype), leaf, dims=1) for leaf in self.leaves]


class Factored:
    """Per-example gradients kept as the factors of each recorded layer call.

    A record's parameter slot may be a view of a parameter (a ``chunk`` of
    ``in_proj_weight``); its per-example gradients are lifted to the parameter
    by :func:`fdl._per_sample.views.lift`.
    """

    def __init__(
        self,
        records: list[_rules.Record],
        params: list[torch.Tensor],
        n: int,
        table: list[_views.Slot],
        scale: float | torch.Tensor = 1.0,
    ) -> None:
        self.records = records
        # every per-example gradient is ``scale`` times the one the records' factors give
        # (``B`` for a batch-mean loss): folded into norms and weights, never into the
        # output gradients themselves, which would copy each of them
        self.scale = scale
        self.params = params
        self.n = n
        self.table = table
        self.slots: list[list[tuple[_rules.Record, str]]] = [[] for _ in params]
        for r in records:
            self.slots[table[r.weight].param].append((r, "weight"))
            if r.bias is not None:
                self.slots[table[r.bias].param].append((r, "bias"))

    def _slot(self, r: _rules.Record, role: str) -> int:
        return r.weight if role == "weight" else r.bias  # type: ignore[return-value]

    def _part(self, r: _rules.Record, role: str) -> torch.Tensor:
        g = _rules.weight_per_sample(r) if role == "weight" else _rules.bias_per_sample(r)
        return _views.lift(self.table, self._slot(r, role), g)

    def _leaf(self, i: int) -> torch.Tensor:
        p = self.params[i]
        out = None
        for r, role in self.slots[i]:
            g = self._part(r, role)
            out = g if out is None else out + g
        if out is None:
            return torch.zeros((self.n, *p.shape), dtype=p.dtype, device=p.device)
        return out.to(p.dtype)

    def materialize(self) -> list[torch.Tensor]:
        return [scaled(self._leaf(i), self.scale) for i in range(len(self.params))]

    def sq_norms(self) -> torch.Tensor:
        total = None
        for i, slots in enumerate(self.slots):
            if not slots:
                continue
            if len(slots) == 1:  # views are norm preserving: the rule's norm is the leaf's
                r, role = slots[0]
                if role == "weight":
                    s = _rules.weight_sq_norms(r)
                else:
                    s = _rules.bias_per_sample(r).square().sum(1)
            else:  # a parameter shared by several layers: sum first, then square
                s = self._leaf(i).flatten(1).square().sum(1)
            total = s if total is None else total + s
        assert total is not None  # every record has a weight slot, and there is a record
        return scaled(total, self.scale**2)

    def weighted_sum(self, w: torch.Tensor) -> list[torch.Tensor]:
        w = scaled(w, self.scale)
        out = []
        for p, slots in zip(self.params, self.slots, strict=True):
            acc = torch.zeros_like(p)
            for r, role in slots:
                if role == "weight":
                    ws = _rules.weight_weighted_sum(r, w)
                else:
                    ws = _rules.bias_weighted_sum(r, w)
                acc = acc + _views.lift(self.table, self._slot(r, role), ws.unsqueeze(0))[0].to(
                    p.dtype
                )
            out.append(acc)
        return out

    def rule_kinds(self) -> list[tuple[str, ...]]:
        """Per parameter leaf, the kinds of the rules that give its gradients."""
        return [tuple(sorted({r.kind for r, _ in slots})) for slots in self.slots]


def scaled(t: torch.Tensor, s: float | torch.Tensor) -> torch.Tensor:
    """``t · s`` (``t`` itself when ``s`` is the number 1); a tensor ``s`` keeps ``t``'s dtype."""
    if isinstance(s, torch.Tensor):
        return t * s.to(t.dtype)
    return t if s == 1.0 else t * s


class Chunked:
    """Consecutive sub-batches, each with its own representation."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def materialize(self) -> list[torch.Tensor]:
        per_part = [p.materialize() for p in self.parts]
        return [torch.cat(leaves, 0) for leaves in zip(*per_part, strict=True)]

    def sq_norms(self) -> torch.Tensor:
        return torch.cat([p.sq_norms() for p in self.parts], 0)

    def weighted_sum(self, w: torch.Tensor) -> list[torch.Tensor]:
        total: list[torch.Tensor] | None = None
        start = 0
        for p in self.parts:
            n = _part_size(p)
            s = p.weighted_sum(w[start : start + n])
            start += n
            total = s if total is None else [a + b for a, b in zip(total, s, strict=True)]
        assert total is not None  # there are always several parts
        return total


def _part_size(rep: Any) -> int:
    if isinstance(rep, Factored):
        return rep.n
    if isinstance(rep, Dense):
        return rep.leaves[0].shape[0]
    return sum(_part_size(p) for p in rep.parts)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def batch_size(batch: Sequence[Any]) -> int:
    """The common leading size of every tensor in ``batch``; ValueError if they differ."""
    sizes = {}
    paths, leaves, _ = _tree.flatten_with_paths(tuple(batch))
    for path, leaf in zip(paths, leaves, strict=True):
        if not isinstance(leaf, torch.Tensor) or leaf.dim() == 0:
            raise ValueError(
                f"per-sample gradients need every batch argument to be a tensor with a "
                f"leading batch axis; argument leaf {path!r} is "
                f"{type(leaf).__name__ if not isinstance(leaf, torch.Tensor) else 'a 0-d tensor'}"
            )
        sizes[path] = leaf.shape[0]
    if not sizes:
        raise ValueError("per-sample gradients need at least one batch argument after params")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch arguments disagree on the batch size: {sizes}")
    return next(iter(sizes.values()))


def in_func_transform() -> bool:
    """True inside a ``torch.func`` transform (``vmap``, ``grad``, ...).

    ``torch.compile`` tracing is not a transform here: the rules path traces
    (:func:`record_traced`).
    """
    return torch._C._functorch.maybe_current_level() is not None


def _slice(batch: Sequence[Any], start: int, stop: int) -> tuple[Any, ...]:
    return tuple(_tree.map(lambda t: t[start:stop], tuple(batch)))


def _split_out(out: Any, has_aux: bool) -> tuple[torch.Tensor, Any]:
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(
                f"has_aux=True: loss_fn must return (loss, aux), got {type(out).__name__}"
            )
        loss, aux = out
    else:
        loss, aux = out, None
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        what = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar loss tensor, got {what}")
    return loss.reshape(()), aux


# ---------------------------------------------------------------------------
# the vmap path
# ---------------------------------------------------------------------------


def vmap_dense(
    loss_fn: LossFn, params: Any, batch: Sequence[Any], has_aux: bool, chunk_size: int | None
) -> Dense:
    """``vmap`` over examples of ``grad(loss_fn)`` on a batch of one."""
    flat, treedef = _tree.flatten(params)

    def loss_of_one(p: list[torch.Tensor], *example: Any) -> torch.Tensor:
        one = _tree.map(lambda t: t.unsqueeze(0), example)  # add the batch axis of one
        loss, _ = _split_out(loss_fn(_tree.unflatten(treedef, p), *one), has_aux)
        return loss

    in_dims = (None,) + (0,) * len(batch)
    grads = torch.func.vmap(torch.func.grad(loss_of_one), in_dims=in_dims, chunk_size=chunk_size)(
        flat, *batch
    )
    return Dense(list(grads))


def vmap_sq_norms(
    loss_fn: LossFn, params: Any, batch: Sequence[Any], has_aux: bool, chunk_size: int | None
) -> torch.Tensor:
    """``‖grad_i‖²`` by ``vmap`` in chunks: only ``chunk_size`` gradients exist at a time."""
    flat, treedef = _tree.flatten(params)

    def loss_of_one(p: list[torch.Tensor], *example: Any) -> torch.Tensor:
        one = _tree.map(lambda t: t.unsqueeze(0), example)
        loss, _ = _split_out(loss_fn(_tree.unflatten(treedef, p), *one), has_aux)
        return loss

    def sq_norm_of_one(p: list[torch.Tensor], *example: Any) -> torch.Tensor:
        g = torch.func.grad(loss_of_one)(p, *example)
        return sum(t.square().sum() for t in g)

    in_dims = (None,) + (0,) * len(batch)
    return torch.func.vmap(sq_norm_of_one, in_dims=in_dims, chunk_size=chunk_size)(flat, *batch)


# ---------------------------------------------------------------------------
# the rules path
# ---------------------------------------------------------------------------


def _run_recorded(
    loss_fn: LossFn,
    treedef: Any,
    flat: list[torch.Tensor],
    batch: Sequence[Any],
    has_aux: bool,
    rec: _rules.Recorder,
) -> tuple[torch.Tensor, Any]:
    """``loss_fn`` on ``flat`` under ``rec``; a ``vmap``-only layer becomes :class:`NoRule`."""
    try:
        with rec:
            out = loss_fn(_tree.unflatten(treedef, flat), *batch)
    except _marks.VmapOnly as e:
        raise NoRule(f"{e} is marked as computed by vmap (no per-sample rule)") from None
    return _split_out(out, has_aux)


def _check_records(records: list[_rules.Record], n: int) -> None:
    """NoRule unless some layer was recorded and every record leads with the batch axis."""
    if not records:
        raise NoRule("no layer with a per-sample rule uses a parameter")
    for r in records:
        if r.out.shape[0] != n or r.a.shape[0] != n:
            raise NoRule(
                f"a {r.kind} call's input or output of shape {tuple(r.a.shape)} -> "
                f"{tuple(r.out.shape)} does not lead with the batch axis ({n}) "
                "(e.g. a sequence-first layout)"
            )


def _record(
    loss_fn: LossFn,
    flat: list[torch.Tensor],
    treedef: Any,
    batch: Sequence[Any],
    has_aux: bool,
    n: int,
) -> tuple[torch.Tensor, Any, list[_rules.Record], list[_views.Slot]]:
    """Run ``loss_fn`` once, recording layer calls, and backpropagate to their outputs.

    Under ``torch.compile`` the same records come from :func:`record_traced`.
    """
    req = [p.detach().requires_grad_(p.is_floating_point()) for p in flat]

    def run(params: list[torch.Tensor], rec: _rules.Recorder) -> tuple[torch.Tensor, Any]:
        return _run_recorded(loss_fn, treedef, params, batch, has_aux, rec)

    if torch.compiler.is_compiling():
        loss, aux, records, slots = record_traced(run, req, n)
    else:
        loss, aux, records, slots = _record_eager(run, req, treedef, n)
    aux = _tree.map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, aux)
    return loss.detach(), aux, records, slots


Run = Callable[[list[torch.Tensor], _rules.Recorder], tuple[torch.Tensor, Any]]


def _record_eager(
    run: Run, req: list[torch.Tensor], treedef: Any, n: int
) -> tuple[torch.Tensor, Any, list[_rules.Record], list[_views.Slot]]:
    """The recording with ``torch.autograd.grad`` to the layer outputs and the parameters."""
    rec = _rules.Recorder(req)
    with torch.enable_grad():
        loss, aux = run(req, rec)
        records = rec.records
        _check_records(records, n)
        wrt = [r.edge for r in records] + [p for p in req if p.requires_grad]
        if not loss.requires_grad:
            raise NoRule("the loss does not depend on the parameters")
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    n_rec = len(records)
    tracked = [i for i, p in enumerate(req) if p.requires_grad]
    for i, g in zip(tracked, grads[n_rec:], strict=True):
        if g is not None:
            paths = _tree.paths(_tree.unflatten(treedef, list(range(len(req)))))
            raise NoRule(f"parameter {paths[i]!r} is used outside the layers with rules")
    for r, g in zip(records, grads[:n_rec], strict=True):
        r.g = torch.zeros(r.out.shape, dtype=r.out.dtype, device=r.a.device) if g is None else g
        r.edge = None  # drop the graph (out is never read again)
    return loss, aux, records, rec.slots


def record_traced(
    run: Run, req: list[torch.Tensor], n: int
) -> tuple[torch.Tensor, Any, list[_rules.Record], list[_views.Slot]]:
    """The recording in a form Dynamo traces (``torch.autograd.grad`` does not).

    Two recordings of the loss (``run(params, recorder)``). The probe runs the
    intercepted calls with outputs outside the graph and the parameters
    tracked (``req``): every decision is made on it from shapes and
    ``requires_grad`` alone, so the traced graph holds no Python branch on data
    (the loss still requiring grad means a parameter reached it through
    another op). The probe's values are unused and the compiler drops its ops.
    The second recording adds a zero ``ε_k`` to the output of the ``k``-th
    call, and ``torch.func.vjp`` of the loss gives ``g_k = ∂loss/∂ε_k``, the
    output gradients, with the layer inputs as aux.
    """
    probe = _rules.Recorder(req, outputs="probe")
    with torch.enable_grad():
        loss, _ = run(req, probe)
    records = probe.records
    _check_records(records, n)
    if loss.requires_grad:
        raise NoRule("a parameter is used outside the layers with rules")
    det = [p.detach() for p in req]
    eps = [torch.zeros(r.out.shape, dtype=r.out.dtype, device=r.out.device) for r in records]
    kept: list[Any] = []  # aux's structure and its non-tensor leaves (vjp's aux holds tensors)

    def perturbed(*eps: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, list[torch.Tensor]]]:
        rec = _rules.Recorder(det, outputs="perturb", perturb=list(eps))
        loss, aux = run(det, rec)
        leaves, aux_def = _tree.flatten(aux)
        kept[:] = [aux_def, [None if isinstance(t, torch.Tensor) else t for t in leaves]]
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        return loss, (tensors, [r.a for r in rec.records])

    loss, vjp_fn, (aux_tensors, acts) = torch.func.vjp(perturbed, *eps, has_aux=True)
    tensors = iter(aux_tensors)
    aux = _tree.unflatten(kept[0], [next(tensors) if t is None else t for t in kept[1]])
    if len(acts) != len(records):
        raise NoRule("the layers called differ between two runs of loss_fn")
    for r, a, g in zip(records, acts, vjp_fn(torch.ones_like(loss)), strict=True):
        r.a, r.g = a, g
        r.out = None  # type: ignore[assignment]
    return loss, aux, records, probe.slots


def _close(a: torch.Tensor, b: torch.Tensor, scale: float) -> bool:
    if a.shape != b.shape:
        return False
    if not a.is_floating_point():  # the indices of an embedding
        return bool(torch.equal(a, b))
    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale + 1e-30))


def _check_same_layers(full: list[_rules.Record], one: list[_rules.Record]) -> None:
    same_layers = len(full) == len(one) and all(
        (a.kind, a.weight, a.bias) == (b.kind, b.weight, b.bias)
        for a, b in zip(full, one, strict=False)
    )
    if not same_layers:
        raise NoRule("the layers called differ between the batch and a single example")


def _reduction_scale(full: list[_rules.Record], one: list[_rules.Record], n: int) -> float:
    """Find ``c`` with ``batch output grad of example 0 == c · its batch-of-one output grad``.

    ``c`` is 1 for a sum over examples and ``1/n`` for a mean. Anything else
    (a non-linear reduction, examples coupled by the model such as batch
    statistics, a random op that draws differently) raises :class:`NoRule`.
    """
    _check_same_layers(full, one)
    num = sum(float(r.g[:1].double().square().sum()) for r in full)
    den = sum(float(r.g.double().square().sum()) for r in one)
    if den == 0.0 or num == 0.0:
        raise NoRule("example 0 has a zero gradient, so the loss reduction cannot be identified")
    ratio = (num / den) ** 0.5
    for c in (1.0, 1.0 / n):
        if abs(ratio / c - 1.0) < 1e-3:
            break
    else:
        raise NoRule(
            f"loss_fn is not a sum or mean of per-example terms (the batch gradient of example 0 "
            f"is {ratio:.6g} times its single-example gradient; expected 1 or 1/{n})"
        )
    for a, b in zip(full, one, strict=True):
        ga, gb = a.g[:1], c * b.g
        if not _close(ga, gb, float(gb.abs().max())) or not _close(
            a.a[:1], b.a, float(b.a.abs().max()) if b.a.is_floating_point() else 0.0
        ):
            raise NoRule(
                "example 0 gets a different gradient in the batch than alone: the model couples "
                "examples (e.g. batch statistics) or draws randomness per batch"
            )
    return c


TRACED_CHECK_FAILED = (
    "per-sample rules under torch.compile: the batch gradient of the example with the largest "
    "gradient is not 1 or 1/B times its gradient as a batch of one (loss_fn is not a sum or "
    "mean of per-example terms, or the model couples examples or draws randomness per batch); "
    "a compiled step cannot fall back to vmap on data, so pass method='vmap'"
)


def _close_traced(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`_close` as a 0-d bool tensor (a shape mismatch is :class:`NoRule` at trace time)."""
    if a.shape != b.shape:
        raise NoRule("a recorded call's shape differs between the batch and a single example")
    if not a.is_floating_point():
        return (a == b).all()
    atol = 1e-4 * b.abs().max() + 1e-30
    return ((a - b).abs() <= atol + 1e-3 * b.abs()).all()


def _loudest(records: list[_rules.Record]) -> torch.Tensor:
    """``(1,)`` index of the example with the largest output-gradient energy ``Σ_r ‖g_r[i]‖²``."""
    energy = sum(r.g.double().flatten(1).square().sum(1) for r in records)
    return energy.argmax().reshape(1)  # type: ignore[union-attr]


def _reduction_scale_traced(
    full: list[_rules.Record], one: list[_rules.Record], n: int, j: torch.Tensor
) -> torch.Tensor:
    """``1/c`` (``1`` or ``n``, a 0-d float64 tensor) from example ``j``, checked in the graph.

    :func:`_reduction_scale` on tensors: ``c`` is whichever of ``1`` and ``1/n``
    is nearer to the gradient ratio, and the checks become one
    ``torch._assert_async`` (raised when the compiled function runs). ``j`` is
    the example with the largest gradient, so ``c`` is identified unless every
    output gradient is zero (then ``c`` does not matter).
    """
    _check_same_layers(full, one)
    num = sum(r.g.index_select(0, j).double().square().sum() for r in full)
    den = sum(r.g.double().square().sum() for r in one)
    ratio = (num / den).sqrt()  # type: ignore[operator]
    mean = (ratio - 1.0 / n).abs() < (ratio - 1.0).abs()
    c = torch.where(mean, 1.0 / n, 1.0)
    ok = (ratio / c - 1.0).abs() < 1e-3
    for a, b in zip(full, one, strict=True):
        ok = ok & _close_traced(a.g.index_select(0, j).double(), c * b.g.double())
        ok = ok & _close_traced(a.a.index_select(0, j), b.a)
    torch._assert_async(ok | (num == 0), TRACED_CHECK_FAILED)
    return 1.0 / c


def rules_factored(
    loss_fn: LossFn, params: Any, batch: Sequence[Any], has_aux: bool
) -> tuple[torch.Tensor, Any, Factored]:
    """The rules path on one (sub-)batch: loss, aux and the factored representation."""
    flat, treedef = _tree.flatten(params)
    n = batch_size(batch)
    loss, aux, records, table = _record(loss_fn, flat, treedef, batch, has_aux, n)
    if n > 1 and torch.compiler.is_compiling():  # the reduction found and checked in the graph
        j = _loudest(records)
        one_batch = tuple(_tree.map(lambda t: t.index_select(0, j), tuple(batch)))  # (1, ...)
        _, _, one, _ = _record(loss_fn, flat, treedef, one_batch, has_aux, 1)
        # undo a batch mean (scale n) or keep a sum (1)
        scale: float | torch.Tensor = _reduction_scale_traced(records, one, n, j)
    elif n > 1:
        _, _, one, _ = _record(loss_fn, flat, treedef, _slice(batch, 0, 1), has_aux, 1)
        scale = 1.0 if _reduction_scale(records, one, n) == 1.0 else float(n)  # n: a mean
    else:
        scale = 1.0
    return loss, aux, Factored(records, flat, n, table, scale)


def try_rules(
    loss_fn: LossFn,
    params: Any,
    batch: Sequence[Any],
    *,
    has_aux: bool,
    chunk_size: int | None,
    need_loss: bool,
) -> tuple[torch.Tensor | None, Any, Any] | str:
    """The rules path, or the reason (a string) why it does not apply."""
    if in_func_transform():
        return "it cannot run inside torch.func transforms"
    n = batch_size(batch)
    try:
        if chunk_size is None or chunk_size >= n:
            return rules_factored(loss_fn, params, batch, has_aux)
        parts = [
            rules_factored(loss_fn, params, _slice(batch, s, s + chunk_size), has_aux)[2]
            for s in range(0, n, chunk_size)
        ]
    except NoRule as e:
        return str(e)
    loss, aux = _batch_loss(loss_fn, params, batch, has_aux, need_loss)
    return loss, aux, Chunked(parts)


def decompose(
    loss_fn: LossFn,
    params: Any,
    batch: Sequence[Any],
    *,
    has_aux: bool,
    chunk_size: int | None,
    method: str,
    need_loss: bool,
    vmap_rep: bool = True,
) -> tuple[torch.Tensor | None, Any, Any, str]:
    """Per-example gradients of ``loss_fn`` as a representation.

    Returns ``(loss, aux, rep, method_used)``; ``loss``/``aux`` are those of the
    whole batch (``None`` when not needed and not free). With ``vmap_rep=False``
    the ``vmap`` path returns ``rep=None`` instead of materialising gradients
    (for callers that compute what they need by ``vmap`` themselves).
    """
    batch_size(batch)
    if method == "rules" or (method == "auto" and not torch.compiler.is_compiling()):
        out = try_rules(
            loss_fn, params, batch, has_aux=has_aux, chunk_size=chunk_size, need_loss=need_loss
        )
        if not isinstance(out, str):
            return (*out, "rules")
        if method == "rules":
            raise ValueError(f"method='rules' does not apply to this loss_fn: {out}")
    rep = vmap_dense(loss_fn, params, batch, has_aux, chunk_size) if vmap_rep else None
    loss, aux = _batch_loss(loss_fn, params, batch, has_aux, need_loss)
    return loss, aux, rep, "vmap"


def _batch_loss(
    loss_fn: LossFn, params: Any, batch: Sequence[Any], has_aux: bool, need: bool
) -> tuple[torch.Tensor | None, Any]:
    if not (need or has_aux):
        return None, None
    with torch.no_grad():
        return _split_out(loss_fn(params, *batch), has_aux)
