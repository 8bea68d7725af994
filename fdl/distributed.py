"""Data-parallel training on ``torch.distributed``: the same pure step on many processes.

fdl plugs its pure steps into PyTorch's own engine rather than inventing a
transport: processes are started by ``torchrun`` (or any launcher that sets
its environment variables), talk through a ``torch.distributed`` process group
(``gloo`` on CPU, ``nccl`` on CUDA), and run the same script. Without a
launcher every function here works in a single-process no-op mode, so one
script runs either way::

    import fdl
    from fdl import distributed as dist

    dist.init()                                   # reads RANK, WORLD_SIZE, ... (no-op alone)
    params = dist.broadcast(model.init(key))      # every rank starts from rank 0's params
    step = dist.make_train_step(loss_fn, opt)     # grads averaged over ranks, same update
    for x, y in dist.shard_batches(x_all, y_all, batch_size=256, key=epoch_key):
        params, opt_state, loss = step(params, opt_state, x, y)
    if dist.is_main():
        fdl.checkpoint.save("ckpt.safetensors", params)

Collectives act on pytrees the way ``DistributedDataParallel`` acts on
gradients: the leaves are flattened, in leaf order, into buckets of at most
``bucket_mb`` megabytes (one dtype and device per bucket), one collective runs
per bucket, and the results are cut back into a tree of the same structure.
Inputs are never modified: every result is a new tensor.

Failures never hang: every collective is bounded by the process group's
``timeout``, and a rank that raises inside :func:`make_train_step`'s step (or
in a ``with fdl.distributed.guard():`` block) records its error in the group's
store before it exits, so the other ranks raise :class:`DistributedError`
naming it instead of a bare transport error.

See ``docs/distributed.md`` for multi-node launches, NCCL, the accountant under
DP-SGD, and what fully sharded training would need.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as _dist

from fdl import random as _random
from fdl import tree as _tree
from fdl._compile import CompileArg, maybe_compile
from fdl._dp_checks import check_dp_options, check_not_accumulating, reject_accumulation

__all__ = [
    "DistributedError",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast",
    "guard",
    "init",
    "is_initialized",
    "is_main",
    "local_rank",
    "make_dp_train_step",
    "make_train_step",
    "rank",
    "shard",
    "shard_batches",
    "shutdown",
    "world_size",
]

DEFAULT_BUCKET_MB = 25.0
"""Bucket size of the collectives, as DDP's default ``bucket_cap_mb``."""

_ERROR_PREFIX = "fdl/error/"


class DistributedError(RuntimeError):
    """A collective failed because another rank raised, exited or timed out."""


# --------------------------------------------------------------------------- process group


def init(
    backend: str | None = None,
    *,
    timeout: float = 300.0,
    device: torch.device | str | None = None,
) -> None:
    """Join the process group described by the ``torchrun`` environment; a no-op alone.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` (what ``torchrun`` sets). Without ``WORLD_SIZE`` (or with
    ``WORLD_SIZE=1`` and no ``MASTER_ADDR``) nothing is initialised and every
    function of this module acts on the single process: :func:`rank` is 0,
    collectives return their input's values.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default ``nccl`` when ``device`` is a
            CUDA device, else ``gloo``.
        timeout: seconds any collective may wait for the other ranks before it
            raises (also the rendezvous timeout).
        device: with a CUDA device and ``nccl``, the device of this rank
            (default ``cuda:LOCAL_RANK``).

    Raises:
        ValueError: a malformed environment (``RANK`` out of range, a non-integer).
    """
    if _dist.is_initialized():
        return
    env = os.environ
    if "WORLD_SIZE" not in env or (env["WORLD_SIZE"] == "1" and "MASTER_ADDR" not in env):
        return
    try:
        world, rank_ = int(env["WORLD_SIZE"]), int(env.get("RANK", "0"))
    except ValueError:
        raise ValueError(
            "fdl.distributed.init: RANK and WORLD_SIZE must be integers, got "
            f"RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}"
        ) from None
    if not 0 <= rank_ < world:
        raise ValueError(f"fdl.distributed.init: RANK={rank_} is outside 0..{world - 1}")
    if timeout <= 0:
        raise ValueError(f"fdl.distributed.init: timeout must be > 0 seconds, got {timeout}")
    dev = torch.device(device) if device is not None else None
    if backend is None:
        backend = "nccl" if dev is not None and dev.type == "cuda" else "gloo"
    if backend == "nccl":
        local = int(env.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(dev if dev is not None and dev.index is not None else local)
    _dist.init_process_group(
        backend=backend,
        rank=rank_,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
    )


def is_initialized() -> bool:
    """Whether a process group is running (False in single-process mode)."""
    return _dist.is_available() and _dist.is_initialized()


def rank() -> int:
    """This process's rank: 0 in single-process mode."""
    return _dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of processes: 1 in single-process mode."""
    return _dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``): 0 in single-process mode."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in single-process mode): where to log and write checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank reaches this point (nothing in single-process mode)."""
    if is_initialized():
        _collective("barrier", _dist.barrier)


def shutdown() -> None:
    """Leave the process group (nothing in single-process mode)."""
    if is_initialized():
        _dist.destroy_process_group()


# --------------------------------------------------------------------------- failures


def _store() -> Any:
    from torch.distributed import distributed_c10d as c10d

    return c10d._get_default_store()


def _report_error(exc: BaseException) -> None:
    """Record this rank's error in the group's store, for the other ranks' messages."""
    if not is_initialized():
        return
    with contextlib.suppress(Exception):
        _store().set(f"{_ERROR_PREFIX}{rank()}", f"{type(exc).__name__}: {exc}"[:500])


def _peer_errors() -> dict[int, str]:
    """Errors other ranks recorded before exiting (best effort: the store may be gone)."""
    found: dict[int, str] = {}
    try:
        store = _store()
        for r in range(world_size()):
            k = f"{_ERROR_PREFIX}{r}"
            if r != rank() and store.check([k]):
                found[r] = store.get(k).decode(errors="replace")
    except Exception:  # the store lives on rank 0: gone if rank 0 died
        if rank() != 0:
            found.setdefault(0, "unreachable (rank 0 hosts the store; it exited or was killed)")
    return found


def _collective(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one collective; turn a transport failure or timeout into a message naming ranks."""
    start = time.monotonic()
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, _dist.DistBackendError) as e:  # type: ignore[misc]
        waited = time.monotonic() - start
        time.sleep(0.2)  # give a failing peer the moment to record its error
        peers = _peer_errors()
        who = (
            "; ".join(f"rank {r} failed: {msg}" for r, msg in sorted(peers.items()))
            if peers
            else "no rank recorded an error (a peer was killed, hung, or timed out)"
        )
        me, world = rank(), world_size()
        _abort()
        raise DistributedError(
            f"fdl.distributed: {name} failed on rank {me} of {world} after "
            f"{waited:.1f} s: {who}. Transport said: {str(e).splitlines()[0] if str(e) else e!r}"
        ) from e


_failed = {"uncaught": False, "armed": False}


def _abort() -> None:
    """Abort the broken group, and make leaving the process skip the group's teardown.

    After a failed collective, the C++ teardown of a gloo group at interpreter
    exit can wait on the dead peer forever. So once a collective has failed, fdl
    ends the process at exit with ``os._exit`` (after flushing stdout/stderr and
    running the other exit handlers registered before), with status 1 if an
    exception went uncaught and 0 otherwise.
    """
    from torch.distributed import distributed_c10d as c10d

    with contextlib.suppress(Exception):
        c10d._abort_process_group()
    if _failed["armed"]:
        return
    _failed["armed"] = True
    previous_hook = sys.excepthook

    def hook(*exc_info: Any) -> None:
        _failed["uncaught"] = True
        previous_hook(*exc_info)

    sys.excepthook = hook

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(1 if _failed["uncaught"] else 0)

    atexit.register(leave)


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Record an exception raised inside the block so the other ranks can name this rank.

    Example:
        >>> from fdl import distributed
        >>> with distributed.guard():  # single-process mode: nothing to record
        ...     pass
    """
    try:
        yield
    except BaseException as e:
        _report_error(e)
        raise


# --------------------------------------------------------------------------- collectives


def _buckets(leaves: Sequence[torch.Tensor], bucket_mb: float) -> list[list[int]]:
    """Group leaf indices, in order, into buckets of one dtype/device and <= bucket_mb MB."""
    if bucket_mb <= 0:
        raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
    cap = bucket_mb * 1024 * 1024
    out: list[list[int]] = []
    size = 0.0
    kind: tuple[Any, Any] | None = None
    for i, t in enumerate(leaves):
        nbytes = t.numel() * t.element_size()
        k = (t.dtype, t.device)
        if out and k == kind and size + nbytes <= cap:
            out[-1].append(i)
            size += nbytes
        else:
            out.append([i])
            size, kind = nbytes, k
    return out


def _bucketed(
    name: str,
    tree: Any,
    bucket_mb: float,
    run: Callable[[torch.Tensor], None],
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Any:
    """Flatten ``tree`` into new buckets, ``run`` a collective on each, cut back into a tree."""
    leaves, treedef = _tree.flatten(tree)
    for p, leaf in zip(_tree.paths(tree), leaves, strict=True):
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"fdl.distributed.{name}: leaf '{p}' is a {type(leaf).__name__}")
    out: list[torch.Tensor | None] = [None] * len(leaves)
    for idx in _buckets(leaves, bucket_mb):
        flat = torch.cat([leaves[i].detach().reshape(-1) for i in idx])  # a new buffer
        _collective(name, run, flat)
        if finish is not None:
            flat = finish(flat)
        for i, piece in zip(idx, flat.split([leaves[i].numel() for i in idx]), strict=True):
            out[i] = piece.view(leaves[i].shape)
    return _tree.unflatten(treedef, out)


def broadcast(tree: Any, src: int = 0, *, bucket_mb: float = DEFAULT_BUCKET_MB) -> Any:
    """Every rank gets ``src``'s values of ``tree`` (new tensors; the input is untouched).

    All ranks must pass trees of the same structure, shapes and dtypes.

    Example:
        >>> import torch
        >>> from fdl import distributed
        >>> distributed.broadcast({"w": torch.ones(2)})  # single-process mode: a copy
        {'w': tensor([1., 1.])}
    """
    if not is_initialized():
        return _tree.map(lambda t: t.detach().clone(), tree)
    return _bucketed("broadcast", tree, bucket_mb, lambda flat: _dist.broadcast(flat, src=src))


def all_reduce_sum(tree: Any, *, bucket_mb: float = DEFAULT_BUCKET_MB) -> Any:
    """The leafwise sum of ``tree`` over all ranks, on every rank (new tensors)."""
    if not is_initialized():
        return _tree.map(lambda t: t.detach().clone(), tree)
    return _bucketed("all_reduce_sum", tree, bucket_mb, _dist.all_reduce)


def all_reduce_mean(tree: Any, *, bucket_mb: float = DEFAULT_BUCKET_MB) -> Any:
    r"""The leafwise mean :math:`\frac{1}{W}\sum_r t_r` of ``tree`` over all ``W`` ranks.

    As DDP averages gradients: summed by one all-reduce per bucket, then
    divided by the world size. Every rank receives the same bits.

    Example:
        >>> import torch
        >>> from fdl import distributed
        >>> distributed.all_reduce_mean({"g": torch.tensor([2.0, 4.0])})
        {'g': tensor([2., 4.])}
    """
    if not is_initialized():
        return _tree.map(lambda t: t.detach().clone(), tree)
    w = world_size()
    return _bucketed("all_reduce_mean", tree, bucket_mb, _dist.all_reduce, lambda f: f / w)


# --------------------------------------------------------------------------- data


def shard(*arrays: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This rank's rows of a global batch: rows ``[r * B/W, (r + 1) * B/W)``.

    ``B`` must be a multiple of the world size, so every rank gets the same
    number of rows and the mean over ranks of per-rank means is the global mean.

    Example:
        >>> import torch
        >>> from fdl import distributed
        >>> distributed.shard(torch.arange(4))
        (tensor([0, 1, 2, 3]),)
    """
    w, r = world_size(), rank()
    out = []
    for i, a in enumerate(arrays):
        b = a.shape[0]
        if b % w:
            raise ValueError(
                f"fdl.distributed.shard: array {i} has {b} rows, not a multiple of the "
                f"world size {w}; use shard_batches(..., pad=True) or a batch size divisible by {w}"
            )
        per = b // w
        out.append(a[r * per : (r + 1) * per])
    return tuple(out)


def shard_batches(
    *arrays: torch.Tensor,
    batch_size: int,
    key: _random.Key | None = None,
    drop_last: bool = False,
    pad: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """:func:`fdl.data.batches` of the global batch size, each cut to this rank's shard.

    Every rank draws the same permutation from the shared ``key`` and keeps its
    slice of each global batch, so the union of the shards of one step is the
    batch a single process would see. ``batch_size`` is the *global* batch and
    must be a multiple of the world size. With ``pad=True`` the final partial
    batch is padded (weight 0 on padding rows) before it is cut, so some ranks
    may hold fewer real rows: use ``make_train_step(..., weighted=True)`` so the
    average weighs each rank by its real rows.

    Example:
        >>> import torch
        >>> from fdl import distributed
        >>> [b[0].tolist() for b in distributed.shard_batches(torch.arange(4), batch_size=2)]
        [[0, 1], [2, 3]]
    """
    from fdl import data as _data

    if batch_size % world_size():
        raise ValueError(
            f"fdl.distributed.shard_batches: the global batch_size {batch_size} must be a "
            f"multiple of the world size {world_size()}"
        )
    for batch in _data.batches(
        *arrays, batch_size=batch_size, key=key, drop_last=drop_last, pad=pad
    ):
        if batch[0].shape[0] % world_size():
            raise ValueError(
                f"fdl.distributed.shard_batches: a final batch of {batch[0].shape[0]} rows "
                f"cannot be split over {world_size()} ranks: pass pad=True or drop_last=True"
            )
        yield shard(*batch)


# --------------------------------------------------------------------------- the step


def make_train_step(
    loss_fn: Callable[..., Any],
    optimizer: Any,
    *,
    has_aux: bool = False,
    weighted: bool = False,
    compile: CompileArg = True,
    bucket_mb: float = DEFAULT_BUCKET_MB,
) -> Callable[..., tuple[Any, ...]]:
    r"""Build the data-parallel ``step(params, opt_state, *shard)``.

    It returns ``(params, opt_state, loss[, aux])`` like :func:`fdl.train.make_train_step`.
    Each rank ``r`` computes ``g_r, l_r = grads_and_loss(loss_fn)(params, *shard_r)``
    on its shard; one bucketed all-reduce gives every rank

    .. math:: g = \frac{1}{W}\sum_r g_r, \qquad l = \frac{1}{W}\sum_r l_r

    (with ``weighted=True``, the last batch tensor is the weight vector ``w`` of
    :func:`fdl.data.batches`'s ``pad`` and the average is
    :math:`\sum_r (\sum_i w_{r,i})\, g_r / \sum_{r,i} w_{r,i}`, the global weighted
    mean); then every rank applies the same update
    ``params + optimizer.update(g, opt_state, params)``. Params therefore stay
    bit-identical on every rank. With equal shards of a global batch ``B`` the
    result equals one process's step on ``B`` up to rounding order.

    The gradient function and the update (:func:`fdl.optim.make_update`) are
    each compiled as ``compile`` says (``True``: ``torch.compile(fullgraph=True)``);
    the all-reduce runs between them, eagerly. In single-process mode the step
    is the ordinary train step.

    Args:
        loss_fn: ``loss_fn(params, *batch) -> loss`` (mean over the shard), or
            ``(loss, aux)`` with ``has_aux``.
        optimizer: a ``GradientTransformation``.
        has_aux: ``loss_fn`` returns ``(loss, aux)``; ``aux`` (this rank's) is
            returned as a fourth value.
        weighted: weigh ranks by the sum of the last batch tensor (padded final
            batches).
        compile: ``True``, ``False`` or a dict of ``torch.compile`` options.
        bucket_mb: the all-reduce bucket size in megabytes.

    Example:
        >>> import torch, fdl
        >>> from fdl import distributed
        >>> loss_fn = lambda p, x: ((x * p["w"]) ** 2).mean()
        >>> opt = fdl.optim.sgd(lr=0.25)
        >>> step = distributed.make_train_step(loss_fn, opt, compile=False)
        >>> p = {"w": torch.tensor([1.0])}
        >>> p, s, loss = step(p, opt.init(p), torch.tensor([[1.0]]))
        >>> p["w"], loss
        (tensor([0.5000]), tensor(1.))
    """
    from fdl import train as _train

    grads_fn = maybe_compile(_train.grads_and_loss(loss_fn, has_aux=has_aux), compile)

    def reduce(params: Any, batch: tuple[Any, ...], options: dict[str, Any]) -> tuple[Any, ...]:
        grads, loss, *aux = grads_fn(params, *batch)
        if weighted:
            if not batch:
                raise ValueError("make_train_step(weighted=True) needs the weight vector")
            wsum = batch[-1].sum().to(loss.dtype)
            total = all_reduce_sum({"w": wsum}, bucket_mb=bucket_mb)["w"]
            scaled = _tree.map(lambda g: g * (wsum / total).to(g.dtype), (grads, loss))
            grads, loss = all_reduce_sum(scaled, bucket_mb=bucket_mb)
        else:
            grads, loss = all_reduce_mean((grads, loss), bucket_mb=bucket_mb)
        return (grads, loss, *aux)

    return _data_parallel(reduce, optimizer, compile, "make_train_step")


def make_dp_train_step(
    loss_fn: Callable[..., Any],
    optimizer: Any,
    *,
    compile: CompileArg = False,
    bucket_mb: float = DEFAULT_BUCKET_MB,
    **dp_options: Any,
) -> Callable[..., tuple[Any, ...]]:
    r"""Build the data-parallel DP-SGD ``step(params, opt_state, key, *shard, mask=None)``.

    Each rank clips its own examples' gradients and sums them,
    :math:`S_r = \sum_{i \in r} f_i\, g_i` with
    :math:`f_i = m_i \min(1, C / (\lVert g_i \rVert + 10^{-6}))` as in
    :func:`fdl.privacy.dp_grads`; one all-reduce gives :math:`S = \sum_r S_r` on
    every rank, and the noise is added **once**, after the sum, from the shared
    ``key``: every rank draws the same :math:`z` and computes the same
    :math:`(S + \sigma C z) / B_e`. Adding independent noise on each rank instead
    would multiply the noise variance by ``W``. Given the same key, batch and
    mask the step equals :func:`fdl.privacy.make_dp_train_step` on one process.

    Accounting is unchanged: one step per global (logical) batch, with the
    sampling rate of the global batch (``q = B_e / N``).

    Args:
        loss_fn, optimizer: as for :func:`fdl.privacy.make_dp_train_step`.
        compile: compile the per-rank clipped sum and the update.
        bucket_mb: the all-reduce bucket size in megabytes.
        dp_options: the DP-SGD keywords of :func:`fdl.privacy.make_dp_train_step`,
            with the same meaning and defaults: ``noise_multiplier``,
            ``max_grad_norm`` (per-layer bounds too), ``expected_batch_size``
            (the *global* one), ``has_aux``, ``method`` and ``micro_batch_size``
            (each rank's shard in chunks).

    Returns:
        ``step(params, opt_state, key, *shard, mask=None) -> (params, opt_state, loss[, aux])``;
        ``loss`` is the mean over ranks of each shard's loss (monitoring only).
    """
    from fdl import privacy as _privacy

    dp = check_dp_options(dp_options, "make_dp_train_step")
    check_not_accumulating(optimizer, "make_dp_train_step")
    clipped_sum = maybe_compile(
        _privacy.dp_grads(loss_fn, **{**dp, "noise_multiplier": 0.0, "expected_batch_size": 1.0}),
        compile,
    )

    def reduce(params: Any, batch: tuple[Any, ...], options: dict[str, Any]) -> tuple[Any, ...]:
        key, *rest = batch
        summed, loss, *aux = clipped_sum(params, key, *rest, **options)
        summed, loss = all_reduce_sum((summed, loss), bucket_mb=bucket_mb)
        noised = _privacy.add_noise(summed, key, dp["noise_multiplier"], dp["max_grad_norm"])
        grads = _tree.map(lambda t: t / dp["expected_batch_size"], noised)
        return (grads, loss / world_size(), *aux)

    step = _data_parallel(reduce, optimizer, compile, "make_dp_train_step")
    return reject_accumulation(step, "make_dp_train_step")


def _data_parallel(
    reduce: Callable[..., tuple[Any, ...]], optimizer: Any, compile: CompileArg, who: str
) -> Callable[..., tuple[Any, ...]]:
    """The shared step: averaged gradients from ``reduce``, then one compiled update."""
    from fdl.optim import make_update

    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"{who}: optimizer must be a GradientTransformation with init and "
            f"update, got {type(optimizer).__name__}"
        )
    update_fn = make_update(optimizer, compile=compile)

    def step(params: Any, opt_state: Any, *batch: Any, **options: Any) -> tuple[Any, ...]:
        with guard():
            grads, *outputs = reduce(params, batch, options)
            new_params, new_state = update_fn(grads, opt_state, params)
        return (new_params, new_state, *outputs)

    return step
