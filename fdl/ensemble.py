"""Ensembles: K models trained and evaluated at once as one vmapped, compiled step.

K models of one architecture are held as one *stacked* parameter tree: every
leaf gets a leading axis of size ``K`` (:func:`fdl.tree.stack`; go back with
:func:`fdl.tree.unstack`). Optimizer states stack the same way. One pure train
step (:func:`fdl.train.make_train_step`) is vectorised over that axis with
``torch.func.vmap`` and compiled once, so the K models train in one call with
batched kernels instead of K calls. Member ``k`` sees only slice ``k`` of every
input: its own params, its own optimizer state and its own batch, so training
the ensemble equals training the K models one after another.

Typical use is K-fold cross-validation: member ``k`` trains on every fold but
``k``. Shapes stay fixed with masks: :func:`fold_batches` pads each member's
batches to one size and returns a 0/1 weight per sample, plus an ``active``
flag per member that freezes a member (params and optimizer state unchanged)
on a step where it has no real sample.

Example:
    >>> import torch, fdl
    >>> from fdl.ensemble import init, init_optimizer, make_ensemble_train_step
    >>> opt = fdl.optim.sgd(lr=0.5)
    >>> loss_fn = lambda p, x, y: ((x @ p["w"] - y) ** 2).mean()
    >>> keys = fdl.random.split(fdl.random.key(0), 3)
    >>> params = init(lambda k: {"w": fdl.random.normal(k, (2,))}, keys)
    >>> params["w"].shape
    torch.Size([3, 2])
    >>> step = make_ensemble_train_step(loss_fn, opt, compile=False)
    >>> x, y = torch.ones(3, 4, 2), torch.zeros(3, 4)  # one (4, 2) batch per member
    >>> params, state, loss = step(params, init_optimizer(opt, params), x, y)
    >>> loss.shape
    torch.Size([3])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from fdl import _compile
from fdl import random as _random
from fdl import tree as _tree
from fdl._compile import CompileArg
from fdl.nn.functional import softmax
from fdl.train import make_train_step, predict

__all__ = [
    "ensemble_apply",
    "ensemble_predict",
    "fold_batches",
    "fold_masks",
    "init",
    "init_optimizer",
    "make_ensemble_train_step",
    "num_members",
]

BatchAxes = int | None | Sequence[int | None]


# ---------------------------------------------------------------------------
# Building stacked ensembles
# ---------------------------------------------------------------------------


def init(init_fn: Callable[[torch.Tensor], Any], keys: torch.Tensor | Sequence[Any]) -> Any:
    """Initialise one member per key and stack them: every leaf gains a leading ``K`` axis.

    ``init(init_fn, keys)`` equals ``fdl.tree.stack([init_fn(k) for k in keys])``,
    so member ``k`` is exactly the model ``init_fn(keys[k])`` would build alone.

    Args:
        init_fn: ``init_fn(key) -> params``, e.g. a layer's ``init``.
        keys: ``K`` keys, e.g. ``fdl.random.split(key, K)`` of shape ``(K, 2)``.

    Returns:
        The stacked params.

    Example:
        >>> import fdl
        >>> p = init(fdl.nn.Linear(3, 2).init, fdl.random.split(fdl.random.key(0), 4))
        >>> p["weight"].shape
        torch.Size([4, 2, 3])
    """
    members = list(keys)
    if not members:
        raise ValueError("init: needs at least one key, got none")
    return _tree.stack([init_fn(k) for k in members])


def init_optimizer(optimizer: Any, params: Any) -> Any:
    """Stack ``optimizer.init`` of every member of stacked ``params``.

    Per-member states (step counts included) get the leading ``K`` axis, which
    :func:`make_ensemble_train_step` maps over. Calling ``optimizer.init`` on
    the stacked params directly would give one shared, unstacked step count.

    Args:
        optimizer: a ``GradientTransformation``.
        params: stacked params (leading axis ``K`` on every leaf).

    Returns:
        The stacked optimizer state.
    """
    return _tree.stack([optimizer.init(p) for p in _tree.unstack(params)])


def num_members(params: Any) -> int:
    """The ensemble size ``K``: the common leading size of every leaf of ``params``.

    Raises:
        ValueError: a leaf is 0-dim or the leading sizes differ (the message names the path).

    Example:
        >>> import torch
        >>> num_members({"w": torch.zeros(5, 3), "b": torch.zeros(5)})
        5
    """
    leaves = _tree.leaves(params)
    if not leaves:
        raise ValueError("num_members: params has no tensor leaves")
    first = leaves[0]
    k = first.shape[0] if isinstance(first, torch.Tensor) and first.ndim > 0 else None
    if k is None or any(
        not isinstance(x, torch.Tensor) or x.ndim == 0 or x.shape[0] != k for x in leaves
    ):
        _raise_members(params)
    assert k is not None
    return k


def _raise_members(params: Any) -> None:
    # the slow path: find the offending leaf and name it
    paths, leaves, _ = _tree.flatten_with_paths(params)
    k = None
    for path, leaf in zip(paths, leaves, strict=True):
        if not isinstance(leaf, torch.Tensor) or leaf.ndim == 0:
            raise ValueError(
                f"num_members: leaf {path!r} has no leading ensemble axis "
                f"(got {type(leaf).__name__} of shape {tuple(getattr(leaf, 'shape', ()))})"
            )
        if k is None:
            k = leaf.shape[0]
        elif leaf.shape[0] != k:
            raise ValueError(
                f"num_members: leaf {path!r} has leading size {leaf.shape[0]}, expected K = {k} "
                f"(the leading size of leaf {paths[0]!r})"
            )


# ---------------------------------------------------------------------------
# The vmapped train step
# ---------------------------------------------------------------------------


def _dims(tree: Any, axis: int | None) -> Any:
    # vmap's in_dims for ``tree``: ``axis`` on tensor leaves, no axis on anything else
    # (``None`` entries stay ``None``, which vmap reads as "not mapped")
    return _tree.map(lambda x: axis if isinstance(x, torch.Tensor) else None, tree)


def _check_leading(tree: Any, k: int, what: str) -> None:
    if all(
        x.ndim > 0 and x.shape[0] == k for x in _tree.leaves(tree) if isinstance(x, torch.Tensor)
    ):
        return
    for path, leaf in zip(*_tree.flatten_with_paths(tree)[:2], strict=True):
        if isinstance(leaf, torch.Tensor) and (leaf.ndim == 0 or leaf.shape[0] != k):
            got = "a 0-dim tensor" if leaf.ndim == 0 else f"leading size {leaf.shape[0]}"
            where = f"{what}[{path!r}]" if path else what
            raise ValueError(
                f"ensemble step: {where} needs a leading ensemble axis of size K = {k} "
                f"(from params), got {got}"
            )


def _batch_axes(batch_axes: BatchAxes, n: int) -> tuple[int | None, ...]:
    if batch_axes is None or isinstance(batch_axes, int):
        return (batch_axes,) * n
    axes = tuple(batch_axes)
    if len(axes) != n:
        raise ValueError(
            f"ensemble step: batch_axes has {len(axes)} entries but the step got {n} batch "
            "arguments"
        )
    return axes


def make_ensemble_train_step(
    loss_fn: Callable[..., Any],
    optimizer: Any,
    *,
    batch_axes: BatchAxes = 0,
    has_aux: bool = False,
    compile: CompileArg = True,
) -> Callable[..., tuple[Any, ...]]:
    r"""Build ``step(params, opt_state, *batch, active=None) -> (params, opt_state, loss[, aux])``.

    ``params`` and ``opt_state`` are stacked (leading axis ``K``, see
    :func:`init` and :func:`init_optimizer`). For each member ``k``, with
    ``s = fdl.train.make_train_step(loss_fn, optimizer, compile=False)``:

    .. math::
        (\theta'_k, S'_k, \ell_k) = s(\theta_k, S_k, b^{(1)}_k, \dots, b^{(m)}_k)
        \quad \text{if } a_k, \qquad (\theta_k, S_k, \ell_k) \text{ otherwise}

    where :math:`b^{(j)}_k` is slice ``k`` of batch argument ``j`` (or the whole
    argument when its axis is ``None``) and :math:`a_k` = ``active[k]``. All
    members run in one ``torch.func.vmap`` call, compiled once with
    ``torch.compile(fullgraph=True)``.

    Args:
        loss_fn: ``loss_fn(params, *batch) -> loss`` for ONE member (unstacked
            params, one member's batch), or ``-> (loss, aux)`` with
            ``has_aux=True``. To mask padded samples, take a weight argument and
            return ``(per_sample * w).sum() / w.sum().clamp_min(1)``.
        optimizer: a ``GradientTransformation``; its state is stacked per member.
        batch_axes: the ensemble axis of each batch argument: ``0`` (default:
            every argument has a leading ``K`` axis, each member its own data),
            ``None`` (one argument shared by every member), or one entry per
            batch argument, e.g. ``(None, None, 0)`` for shared ``x, y`` and
            per-member weights.
        has_aux: ``loss_fn`` returns ``(loss, aux)``; ``aux`` (tensors) comes
            back stacked as a fourth value.
        compile: ``True`` (``torch.compile(fullgraph=True)``), ``False``
            (eager vmap) or a dict of ``torch.compile`` options.

    Returns:
        The step. ``loss`` has shape ``(K,)``: each member's loss at its
        incoming params. ``active`` (optional bool ``(K,)``) freezes the
        members where it is false: their params and optimizer state (step
        count included) come back unchanged, as if the step had not happened
        for them. Inputs are never modified.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.sgd(lr=1.0)
        >>> step = make_ensemble_train_step(lambda p, x: (p["w"] * x).sum(), opt, compile=False)
        >>> p = {"w": torch.zeros(2, 1)}
        >>> p, s, loss = step(p, init_optimizer(opt, p), torch.ones(2, 1),
        ...                   active=torch.tensor([True, False]))
        >>> p["w"].flatten()
        tensor([-1.,  0.])
    """
    member_step = make_train_step(loss_fn, optimizer, has_aux=has_aux, compile=False)

    def ensemble_step(
        params: Any, opt_state: Any, active: torch.Tensor | None, *batch: Any
    ) -> tuple[Any, ...]:
        axes = _batch_axes(batch_axes, len(batch))
        p_dims, s_dims = _dims(params, 0), _dims(opt_state, 0)

        def one(p: Any, s: Any, a: torch.Tensor | None, *b: Any) -> tuple[Any, ...]:
            out = member_step(p, s, *b)
            if a is None:
                return out
            keep = lambda new, old: torch.where(a, new, old)  # noqa: E731
            new_p = _tree.map(keep, out[0], p)
            new_s = _tree.map(
                lambda n, o: keep(n, o) if isinstance(n, torch.Tensor) else n, out[1], s
            )
            return (new_p, new_s, *out[2:])

        in_dims: tuple[Any, ...] = (p_dims, s_dims, None if active is None else 0)
        in_dims += tuple(_dims(b, ax) for b, ax in zip(batch, axes, strict=True))
        out_dims = (p_dims, s_dims, 0, 0) if has_aux else (p_dims, s_dims, 0)
        return torch.func.vmap(one, in_dims=in_dims, out_dims=out_dims)(
            params, opt_state, active, *batch
        )

    compiled = _compile.maybe_compile(ensemble_step, compile)

    def step(
        params: Any, opt_state: Any, *batch: Any, active: torch.Tensor | None = None
    ) -> tuple[Any, ...]:
        k = num_members(params)
        _check_leading(opt_state, k, "opt_state")
        for i, (b, ax) in enumerate(zip(batch, _batch_axes(batch_axes, len(batch)), strict=True)):
            if ax is not None:
                _check_leading(b, k, f"batch argument {i}")
        if active is not None:
            if not isinstance(active, torch.Tensor) or active.shape != (k,):
                shape = tuple(active.shape) if isinstance(active, torch.Tensor) else active
                raise ValueError(
                    f"ensemble step: active must be a bool tensor of shape (K,) = ({k},), "
                    f"got {shape}"
                )
            active = active != 0
        return compiled(params, opt_state, active, *batch)

    return step


# ---------------------------------------------------------------------------
# K-fold batching with fixed shapes
# ---------------------------------------------------------------------------


def fold_batches(
    key: torch.Tensor, train_indices: Sequence[torch.Tensor], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One epoch of fixed-shape batches for K members, each over its own index set.

    Member ``k`` visits ``train_indices[k]`` in the order
    ``fdl.random.permutation(fdl.random.fold_in(key, k), m_k)`` in batches of
    ``batch_size`` (the batches ``fdl.data.batches(..., key=fold_in(key, k))``
    gives over its indices). Members with fewer batches than the longest get
    all-padding batches at the end. Every yielded tensor has a fixed shape, so
    a compiled step never recompiles.

    Args:
        key: an ``fdl.random`` key (fold in the epoch for a new order per epoch).
        train_indices: ``K`` int64 index tensors, e.g. the train halves of
            ``fdl.data.kfold``.
        batch_size: samples per member per step.

    Yields:
        ``(idx, weight, active)``: ``idx`` int64 ``(K, batch_size)`` (gather the
        batch with ``x[idx]``), ``weight`` float ``(K, batch_size)`` (1 for real
        samples, 0 for padding, which repeats a real index) and ``active`` bool
        ``(K,)`` (member has at least one real sample; pass as ``active=``).

    Example:
        >>> import torch, fdl
        >>> sets = [torch.arange(5), torch.arange(10, 13)]
        >>> [w.tolist() for _, w, _ in fold_batches(fdl.random.key(0), sets, 2)]
        [[[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fold_batches: batch_size must be an int >= 1, got {batch_size!r}")
    sets = list(train_indices)
    if not sets:
        raise ValueError("fold_batches: train_indices is empty (need K >= 1 index tensors)")
    for k, s in enumerate(sets):
        if not isinstance(s, torch.Tensor) or s.ndim != 1 or s.numel() == 0:
            shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(
                f"fold_batches: train_indices[{k}] must be a non-empty 1-d index tensor, "
                f"got {shape}"
            )
    steps = max(math.ceil(s.numel() / batch_size) for s in sets)
    total = steps * batch_size
    orders, weights = [], []
    for k, s in enumerate(sets):
        m = s.numel()
        order = s[_random.permutation(_random.fold_in(key, k), m).to(s.device)]
        weight = torch.zeros(total, device=s.device)
        weight[:m] = 1.0
        order = torch.cat([order, order[:1].expand(total - m)])  # pad with a real index
        orders.append(order)
        weights.append(weight)
    idx = torch.stack(orders).reshape(len(sets), steps, batch_size)  # (K, steps, B)
    w = torch.stack(weights).reshape(len(sets), steps, batch_size)
    for i in range(steps):
        yield idx[:, i], w[:, i], w[:, i].sum(dim=1) > 0


def fold_masks(folds: Sequence[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
    """Boolean validation masks ``(K, n)``: row ``k`` is true on fold ``k``'s validation indices.

    With ``fdl.metrics`` functions' ``mask`` argument, one vmapped evaluation
    over all ``n`` samples scores every member on its own validation fold.

    Args:
        folds: ``K`` ``(train_idx, val_idx)`` pairs, as from ``fdl.data.kfold``.
        n: the dataset size.

    Returns:
        A ``(K, n)`` bool tensor.

    Example:
        >>> import torch
        >>> fold_masks([(torch.tensor([1, 2]), torch.tensor([0])),
        ...             (torch.tensor([0]), torch.tensor([1, 2]))], 3)
        tensor([[ True, False, False],
                [False,  True,  True]])
    """
    if not folds:
        raise ValueError("fold_masks: folds is empty")
    masks = torch.zeros(len(folds), n, dtype=torch.bool)
    for k, (_, val) in enumerate(folds):
        if val.numel() and (int(val.min()) < 0 or int(val.max()) >= n):
            raise ValueError(
                f"fold_masks: fold {k} has validation indices in "
                f"[{int(val.min())}, {int(val.max())}], outside [0, {n - 1}]"
            )
        masks[k, val] = True
    return masks


# ---------------------------------------------------------------------------
# Applying and predicting
# ---------------------------------------------------------------------------


def ensemble_apply(
    apply: Callable[..., torch.Tensor], params: Any, x: torch.Tensor, *, x_axis: int | None = None
) -> torch.Tensor:
    """Every member's outputs: ``out[k] = apply(params[k], x)`` stacked to ``(K, ...)``.

    Args:
        apply: ``apply(params, x) -> outputs`` for one member (e.g. a layer's ``apply``).
        params: stacked params.
        x: inputs shared by all members (``x_axis=None``), or per member with
            the ensemble axis at ``x_axis``.

    Returns:
        The stacked outputs, ensemble axis first.

    Example:
        >>> import torch, fdl
        >>> layer = fdl.nn.Linear(3, 2)
        >>> p = init(layer.init, fdl.random.split(fdl.random.key(0), 4))
        >>> ensemble_apply(layer.apply, p, torch.ones(5, 3)).shape
        torch.Size([4, 5, 2])
    """
    num_members(params)
    return torch.func.vmap(lambda p, xb: apply(p, xb), in_dims=(_dims(params, 0), x_axis))(
        params, x
    )


_OUTPUTS = ("probs", "classes", "member_logits")


def ensemble_predict(
    apply: Callable[..., torch.Tensor],
    params: Any,
    data: torch.Tensor,
    batch_size: int = 256,
    *,
    output: str = "probs",
    compile: CompileArg = False,
) -> torch.Tensor:
    r"""Predict a whole dataset with the ensemble, averaging the members' probabilities.

    .. math::
        \bar p_{n} = \frac{1}{K} \sum_{k=1}^{K} \operatorname{softmax}(z_{k n}),
        \qquad \hat y_n = \arg\max_c \bar p_{n c}

    where :math:`z_{k n}` = ``apply(params[k], x[n])`` (logits or
    log-probabilities: the softmax gives the same probabilities for both).
    Batched like :func:`fdl.train.predict`: the final partial batch is padded
    and cut, no sample is dropped.

    Args:
        apply: ``apply(params, x) -> (batch, C)`` for one member.
        params: stacked params.
        data: inputs ``(N, ...)``.
        batch_size: rows per forward pass (of all members at once).
        output: ``"probs"`` (:math:`\bar p`, ``(N, C)``), ``"classes"``
            (:math:`\hat y`, int64 ``(N,)``) or ``"member_logits"`` (every
            member's raw outputs, ``(K, N, C)``).
        compile: compile the forward pass (see :func:`fdl.train.make_train_step`).

    Returns:
        A tensor as described for ``output``.

    Note:
        Averaging probabilities (not logits) is the usual deep-ensemble rule;
        the mean of logits would weight confident members differently.

    Example:
        >>> import torch, fdl
        >>> layer = fdl.nn.Linear(3, 4)
        >>> p = init(layer.init, fdl.random.split(fdl.random.key(0), 2))
        >>> ensemble_predict(layer.apply, p, torch.ones(5, 3), 2).sum(1)
        tensor([1.0000, 1.0000, 1.0000, 1.0000, 1.0000])
    """
    if output not in _OUTPUTS:
        raise ValueError(f"ensemble_predict: output must be one of {_OUTPUTS}, got {output!r}")

    def forward(p: Any, x: torch.Tensor) -> torch.Tensor:
        z = ensemble_apply(apply, p, x)  # (K, B, C)
        if output == "member_logits":
            return z.movedim(0, 1)  # (B, K, C): predict concatenates along the batch axis
        probs = softmax(z, dim=-1).mean(dim=0)  # (B, C)
        return probs.argmax(dim=1) if output == "classes" else probs

    out = predict(forward, params, data, batch_size, output="logits", compile=compile)
    return out.movedim(1, 0) if output == "member_logits" else out
