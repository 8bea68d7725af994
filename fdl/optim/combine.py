"""Combinators with Optax's names: parameter groups, injected hyperparameters, lookahead, EMAs.

- :func:`partition` (old name :func:`multi_transform`): a different transformation
  per group of leaves, chosen by a tree of labels; torch's param groups.
- :func:`inject_hyperparams`: an optimizer whose numeric hyperparameters live in
  its state as tensors (changed between steps without recompiling, logged, or
  given as schedules evaluated every step).
- :func:`lookahead`: fast and slow params, synchronised every ``sync_period`` steps.
- :func:`ema`: an exponential moving average of the updates.
- :func:`incremental_update`, :func:`periodic_update`: moving-average and periodic
  copies of params (target networks, Polyak averaging).

Gradient accumulation (Optax's ``MultiSteps``) lives in :mod:`fdl.optim.wrappers`.
Formulas use ``g`` for the incoming updates, ``θ`` for the params, ``t`` for the
1-based step.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, NamedTuple

import torch

from fdl import _eager, tree
from fdl.optim import _common as C
from fdl.optim import _foreach as F
from fdl.optim import _validation
from fdl.optim.base import GradientTransformation, Params, Updates

__all__ = [
    "EmaState",
    "InjectHyperparamsState",
    "LookaheadParams",
    "LookaheadState",
    "MultiTransformState",
    "PartitionState",
    "ema",
    "incremental_update",
    "inject_hyperparams",
    "lookahead",
    "multi_transform",
    "partition",
    "periodic_update",
]

Tensor = torch.Tensor


# ---------------------------------------------------------------------------
# partition / multi_transform: parameter groups
# ---------------------------------------------------------------------------


class PartitionState(NamedTuple):
    """State of :func:`partition`: label -> the state of that label's transformation,
    built on the flat dict ``{dotted path: leaf}`` of its group."""

    inner_states: dict[Hashable, Any]


MultiTransformState = PartitionState


def _names(keys: Iterable[Any]) -> str:
    """``['a', 'b']``: labels sorted by their repr, for messages."""
    return "[" + ", ".join(sorted(map(repr, keys))) + "]"


def _is_node(x: Any) -> bool:
    return isinstance(x, dict | list | tuple)


def _broadcast_labels(labels: Any, target: Any, path: str = "") -> Any:
    """``labels`` (the structure of ``target`` or a prefix of it) as a full tree of labels.

    A label at a node labels every leaf below it (Optax's prefix trees).
    """
    if not _is_node(labels):
        return tree.map(lambda _: labels, target)
    where = f" at '{path}'" if path else ""
    if isinstance(labels, dict):
        if not isinstance(target, Mapping) or set(labels) != set(target):
            got = sorted(map(str, labels))
            want = sorted(map(str, target)) if isinstance(target, Mapping) else type(target)
            raise ValueError(
                f"partition: param_labels do not match the params{where}: labels have keys "
                f"{got}, the params have {want}"
            )
        return type(target)(
            (k, _broadcast_labels(labels[k], target[k], f"{path}.{k}" if path else str(k)))
            for k in target
        )
    if not isinstance(target, list | tuple) or len(labels) != len(target):
        n = len(target) if isinstance(target, list | tuple) else type(target).__name__
        raise ValueError(
            f"partition: param_labels do not match the params{where}: labels hold "
            f"{len(labels)} entries, the params {n}"
        )
    items = [
        _broadcast_labels(lab, t, f"{path}.{i}" if path else str(i))
        for i, (lab, t) in enumerate(zip(labels, target, strict=True))
    ]
    return type(target)(*items) if hasattr(target, "_fields") else type(target)(items)


def partition(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any | Callable[[Params], Any],
) -> GradientTransformation:
    r"""Apply a different transformation to each group of leaves: torch's param groups.

    With labels :math:`\ell_i` (one per leaf) and ``transforms`` :math:`T_k`:
    :math:`u_i = T_{\ell_i}(g_{\{j:\ell_j=\ell_i\}})_i`. Each :math:`T_k` sees only
    its group: the flat dict ``{dotted path: leaf}`` of the leaves labelled ``k``
    (``{"0.weight": ..., "2.weight": ...}``), so its state holds those leaves alone,
    keyed by path.

    Args:
        transforms: label -> transformation. Every label used must be a key; a
            transformation with no leaves keeps an empty state.
        param_labels: a tree of labels with the params' structure, or a prefix of it
            (a label on a subtree labels all its leaves), or a function of the params
            (of the updates when ``update`` gets no params) returning one.

    Returns:
        A transformation with :class:`PartitionState`.

    Raises:
        ValueError: when a label has no transformation or the labels do not match the
            params (naming the labels and the path).

    Example (no weight decay on biases: torch's two param groups)::

        >>> import torch, fdl
        >>> tx = partition(
        ...     {"decay": fdl.optim.adamw(0.1, weight_decay=0.1),
        ...      "no_decay": fdl.optim.adamw(0.1, weight_decay=0.0)},
        ...     {"w": "decay", "b": "no_decay"})
        >>> p = {"w": torch.ones(2), "b": torch.ones(2)}
        >>> u, s = tx.update({"w": torch.ones(2), "b": torch.ones(2)}, tx.init(p), p)
        >>> fdl.optim.apply_updates(p, u)
        {'w': tensor([0.8900, 0.8900]), 'b': tensor([0.9000, 0.9000])}

    Note:
        As Optax's ``partition`` (``multi_transform``), except that a group's
        transformation gets the flat dict of its leaves (Optax: the whole tree with
        masked-out nodes), which keeps every update traceable by ``torch.compile``.
        ``torch.optim`` param groups share one optimizer class; here each group may
        be any transformation.
    """
    if not isinstance(transforms, Mapping) or not transforms:
        raise TypeError("partition: transforms must be a non-empty dict label -> transformation")
    for k, t in transforms.items():
        if not isinstance(t, GradientTransformation):
            raise TypeError(
                f"partition: transforms[{k!r}] is a {type(t).__name__}, not a "
                "GradientTransformation"
            )

    def labels_for(target: Any) -> Any:
        labels = param_labels(target) if callable(param_labels) else param_labels
        full = _broadcast_labels(labels, target)
        used = set(tree.leaves(full))
        missing = used - set(transforms)
        if missing:
            paths = [p for p, lab in tree.to_flat_dict(full).items() if lab in missing]
            raise ValueError(
                f"partition: labels {_names(missing)} (at {paths}) have no transformation; "
                f"the transforms are {_names(transforms)}"
            )
        return full

    # each group's leaves (indices and dotted paths) for a params layout (paths and
    # shapes), resolved eagerly once (``init`` always runs eagerly): a memo of a function
    # of the layout, so a compiled update never traces the labelling function
    resolved: dict[Any, dict[Hashable, tuple[list[int], list[str]]]] = {}

    def groups_for(target: Any) -> dict[Hashable, tuple[list[int], list[str]]]:
        paths = tree.paths(target)
        shapes = tuple(tuple(getattr(x, "shape", ())) for x in tree.leaves(target))
        key = (tuple(paths), shapes)
        if key not in resolved:
            labels = tree.leaves(labels_for(target))
            resolved[key] = {
                k: (
                    [i for i, lab in enumerate(labels) if lab == k],
                    [p for p, lab in zip(paths, labels, strict=True) if lab == k],
                )
                for k in transforms
            }
        return resolved[key]

    def init(params: Params) -> PartitionState:
        lv = tree.leaves(params)
        return PartitionState(
            {
                k: transforms[k].init({p: lv[i] for i, p in zip(idx, paths, strict=True)})
                for k, (idx, paths) in groups_for(params).items()
            }
        )

    def update(
        updates: Updates, state: PartitionState, params: Params | None = None
    ) -> tuple[Updates, PartitionState]:
        if _validation.checking_state(state, PartitionState, "partition"):
            if set(state.inner_states) != set(transforms):
                raise ValueError(
                    f"partition.update: the state holds labels "
                    f"{_names(state.inner_states)}, the transforms {_names(transforms)}"
                )
            if params is not None:
                _validation.check_tree(
                    updates,
                    params,
                    got_name="the gradients",
                    expected_name="the params",
                    context="partition.update",
                )
        g, treedef = tree.flatten(updates)
        p = None if params is None else tree.leaves(params)
        out = list(g)
        new = {}
        for k, (idx, paths) in groups_for(updates if params is None else params).items():
            sub_g = {path: g[i] for i, path in zip(idx, paths, strict=True)}
            sub_p = None if p is None else {path: p[i] for i, path in zip(idx, paths, strict=True)}
            sub_u, inner = transforms[k].update(sub_g, state.inner_states[k], sub_p)
            for i, path in zip(idx, paths, strict=True):
                out[i] = sub_u[path]
            new[k] = inner
        return tree.unflatten(treedef, out), PartitionState(new)

    return GradientTransformation(init, update)


multi_transform = partition


# ---------------------------------------------------------------------------
# inject_hyperparams: hyperparameters as tensors in the state
# ---------------------------------------------------------------------------


class InjectHyperparamsState(NamedTuple):
    """State of :func:`inject_hyperparams`: step count, the hyperparameters used by the
    last update (at ``init``: their values for step 1), and the inner state."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    hyperparams: dict[str, Any]
    inner_state: Any


def _is_number(x: Any) -> bool:
    return not isinstance(x, bool) and (
        isinstance(x, numbers.Real) or (isinstance(x, Tensor) and x.numel() == 1)
    )


def _is_dynamic(x: Any) -> bool:
    """A value :func:`inject_hyperparams` keeps in the state: a number or a schedule."""
    return _is_number(x) or (callable(x) and not isinstance(x, type))


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: torch.dtype | None = None,
) -> Callable[..., GradientTransformation]:
    r"""Make an optimizer whose numeric hyperparameters live in its state as tensors.

    ``inject_hyperparams(fdl.optim.adamw)(lr=1e-3, weight_decay=0.1)`` behaves as
    ``fdl.optim.adamw(lr=1e-3, weight_decay=0.1)``, but every numeric argument given
    (a pair such as ``betas`` element by element) is a scalar tensor in
    ``state.hyperparams``; the defaults stay the factory's own Python values. At
    each update the optimizer is rebuilt from them: :math:`(u, s') = \text{factory}(h)(g, s)` with
    :math:`h_k = \text{schedule}_k(\text{count})` for a hyperparameter given as a
    schedule (evaluated every step, ``count`` = updates already applied) and
    :math:`h_k` = ``state.hyperparams[k]`` otherwise. Replace a value between steps
    (``state._replace(hyperparams={**state.hyperparams, "lr": torch.tensor(1e-4,
    dtype=torch.float64)})``): a compiled step reads it as a graph input and does
    not recompile; ``state.hyperparams`` after an update holds the values it used
    (log them). Overriding a scheduled value has no effect.

    Args:
        inner_factory: a function returning a transformation (an optimizer or block).
        static_args: names of arguments to keep as Python values: callables that are
            not schedules, and numbers the factory branches on in Python (ints it needs
            as ints, ``sgd``'s ``dampening``), which would otherwise stop
            ``torch.compile`` tracing. Booleans, ``None`` and other non-numbers are
            always static.
        hyperparam_dtype: the dtype of floating hyperparameters; default
            ``torch.float64`` (a Python float exactly).

    Returns:
        A function taking ``inner_factory``'s arguments (numbers or schedules) and
        returning a transformation with :class:`InjectHyperparamsState`.

    Example:
        >>> import torch, fdl
        >>> opt = inject_hyperparams(fdl.optim.sgd)(lr=0.1)
        >>> p = {"w": torch.ones(2)}
        >>> s = opt.init(p)
        >>> s.hyperparams["lr"]
        tensor(0.1000, dtype=torch.float64)
        >>> s = s._replace(hyperparams={**s.hyperparams, "lr": torch.tensor(0.5).double()})
        >>> u, s = opt.update({"w": torch.ones(2)}, s, p)
        >>> u["w"]
        tensor([-0.5000, -0.5000])

    Note:
        As Optax's ``inject_hyperparams``, except that only the arguments given are
        injected (Optax: the defaults too), floats are stored in float64 by default
        (Optax: the params' widest dtype) and tuples of numbers (torch's ``betas``)
        are injected element by element.
    """
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    unknown = static - set(signature.parameters)
    if unknown:
        raise ValueError(
            f"inject_hyperparams: static_args {sorted(unknown)} are not parameters of "
            f"{getattr(inner_factory, '__name__', 'the factory')}; its parameters are "
            f"{list(signature.parameters)}"
        )
    fdtype = torch.float64 if hyperparam_dtype is None else hyperparam_dtype

    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformation:
        bound = signature.bind(*args, **kwargs)  # the given arguments; defaults stay static
        arguments: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError("inject_hyperparams: *args of the factory are not supported")
            else:
                arguments[name] = value
        fixed: dict[str, Any] = {}
        dynamic: dict[str, Any] = {}  # name -> value, or tuple of values
        for name, value in arguments.items():
            is_seq = isinstance(value, tuple | list) and len(value) > 0
            if name in static or not (
                _is_dynamic(value) or (is_seq and all(_is_dynamic(v) for v in value))
            ):
                fixed[name] = value
            else:
                dynamic[name] = value

        def as_tensor(v: Any) -> Tensor:
            if isinstance(v, Tensor):
                return v.to(fdtype) if v.is_floating_point() and v.dtype != fdtype else v
            return torch.as_tensor(v, dtype=torch.int64 if isinstance(v, int) else fdtype)

        def values(count: Tensor, current: dict[str, Any]) -> dict[str, Any]:
            """Every dynamic hyperparameter at ``count``: schedules evaluated, others read."""

            def one(spec: Any, now: Any) -> Tensor:
                if callable(spec) and not isinstance(spec, Tensor):
                    return as_tensor(torch.as_tensor(spec(count)))
                return as_tensor(now).clone()  # a fresh scalar: no storage shared with the input

            out = {}
            for name, spec in dynamic.items():
                now = current[name]
                if isinstance(spec, tuple | list):
                    out[name] = tuple(one(s, n) for s, n in zip(spec, now, strict=True))
                else:
                    out[name] = one(spec, now)
            return out

        def build(h: dict[str, Any]) -> GradientTransformation:
            return inner_factory(**fixed, **h)

        def init(params: Params) -> InjectHyperparamsState:
            count = C.zero_count(params)
            h = values(count, dynamic)  # schedules at count 0, the given numbers
            return InjectHyperparamsState(count, h, build(h).init(params))

        def update(
            updates: Updates, state: InjectHyperparamsState, params: Params | None = None
        ) -> tuple[Updates, InjectHyperparamsState]:
            if _validation.checking_state(state, InjectHyperparamsState, "inject_hyperparams"):
                if set(state.hyperparams) != set(dynamic):
                    missing = sorted(set(dynamic) - set(state.hyperparams))
                    extra = sorted(set(state.hyperparams) - set(dynamic))
                    raise ValueError(
                        "inject_hyperparams.update: state.hyperparams must hold "
                        f"{sorted(dynamic)}; missing {missing}, unexpected {extra}"
                    )
            h = values(state.count, state.hyperparams)
            new_u, inner_state = build(h).update(updates, state.inner_state, params)
            return new_u, InjectHyperparamsState(state.count + 1, h, inner_state)

        return GradientTransformation(init, update)

    wrapped.__name__ = f"inject_hyperparams({getattr(inner_factory, '__name__', 'factory')})"
    wrapped.__doc__ = inner_factory.__doc__
    return wrapped


# ---------------------------------------------------------------------------
# lookahead
# ---------------------------------------------------------------------------


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`: the fast optimizer's state and the fast steps taken
    since the last synchronisation."""

    fast_state: Any
    steps_since_sync: Tensor


class LookaheadParams(NamedTuple):
    """The params of :func:`lookahead`: ``fast`` (take gradients here) and ``slow``
    (evaluate and deploy these)."""

    fast: Any
    slow: Any

    @classmethod
    def init_synced(cls, params: Params) -> LookaheadParams:
        """Fast and slow params both equal to ``params`` (copies)."""
        return cls(fast=params, slow=tree.map(torch.clone, params))


def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: float,
    reset_state: bool = False,
) -> GradientTransformation:
    r"""Lookahead: take ``sync_period`` fast steps, then move the slow params towards them.

    With fast params :math:`\phi`, slow params :math:`\theta`, fast update
    :math:`v = \text{fast\_optimizer}(g)`, ``α = slow_step_size`` and
    ``sync`` true on every ``sync_period``-th call:

    .. math::
        d = \phi + v - \theta, \qquad
        u_\theta = [\text{sync}]\,\alpha d, \qquad
        u_\phi = v - [\text{sync}]\,(1-\alpha) d

    so ``apply_updates`` gives :math:`\phi' = \phi + v` between synchronisations and
    :math:`\theta' = \phi' = \theta + \alpha(\phi + v - \theta)` at one. With
    ``reset_state`` the fast optimizer's state is re-initialised at a sync.

    ``params`` and the updates returned are :class:`LookaheadParams`
    ``(fast, slow)``; the gradients are those of the loss at ``params.fast``.
    Read the slow params (for evaluation) as ``params.slow`` after
    ``params = apply_updates(params, updates)``; start from
    ``LookaheadParams.init_synced(params)``.

    Args:
        fast_optimizer: the inner optimizer.
        sync_period: fast steps between synchronisations (an int ``>= 1``).
        slow_step_size: ``α`` in ``[0, 1]``.
        reset_state: re-initialise the fast state at every synchronisation.

    Returns:
        A transformation with :class:`LookaheadState`; ``update`` needs the params.

    Example:
        >>> import torch, fdl
        >>> opt = lookahead(fdl.optim.sgd(0.5), sync_period=2, slow_step_size=0.5)
        >>> p = LookaheadParams.init_synced({"w": torch.zeros(1)})
        >>> s = opt.init(p)
        >>> for _ in range(2):
        ...     u, s = opt.update({"w": -torch.ones(1)}, s, p)
        ...     p = fdl.optim.apply_updates(p, u)
        >>> p.fast["w"], p.slow["w"]
        (tensor([0.5000]), tensor([0.5000]))

    Note:
        As Optax's ``lookahead``. The updates must be applied unchanged, or fast and
        slow params fall out of step.
    """
    if isinstance(sync_period, bool) or not isinstance(sync_period, int) or sync_period < 1:
        raise ValueError(f"lookahead: sync_period must be an int >= 1; got {sync_period!r}")
    C.check_unit_interval("slow_step_size", slow_step_size, closed=True)

    def init(params: Params) -> LookaheadState:
        fast = params.fast if isinstance(params, LookaheadParams) else params
        count = C.zero_count(fast)
        return LookaheadState(fast_optimizer.init(fast), count)

    def update(
        updates: Updates, state: LookaheadState, params: LookaheadParams | None = None
    ) -> tuple[LookaheadParams, LookaheadState]:
        if _eager.validating():
            if not isinstance(params, LookaheadParams):
                raise ValueError(
                    "lookahead.update needs the params as LookaheadParams(fast, slow); got "
                    f"{type(params).__name__} (start from LookaheadParams.init_synced(params))"
                )
            _validation.check_state_type(state, LookaheadState, "lookahead")
            _validation.check_tree(
                params.slow,
                params.fast,
                got_name="params.slow",
                expected_name="params.fast",
                context="lookahead",
            )
        assert params is not None
        v, fast_state = fast_optimizer.update(updates, state.fast_state, params.fast)
        sync = state.steps_since_sync == sync_period - 1
        v_lv, treedef = tree.flatten(v)
        fast_lv, slow_lv = tree.leaves(params.fast), tree.leaves(params.slow)
        d = [f + u - s for f, u, s in zip(fast_lv, v_lv, slow_lv, strict=True)]
        slow_u = F.where_zero(sync, F.scale(d, slow_step_size))
        fast_u = [
            u - c
            for u, c in zip(v_lv, F.where_zero(sync, F.scale(d, 1.0 - slow_step_size)), strict=True)
        ]
        if reset_state:
            fresh = fast_optimizer.init(params.fast)
            fast_state = tree.map(lambda a, b: torch.where(sync, b, a), fast_state, fresh)
        steps = torch.where(sync, 0, state.steps_since_sync + 1)
        out = LookaheadParams(tree.unflatten(treedef, fast_u), tree.unflatten(treedef, slow_u))
        return out, LookaheadState(fast_state, steps)

    return GradientTransformation(init, update)


# ---------------------------------------------------------------------------
# ema of updates; moving and periodic copies of params
# ---------------------------------------------------------------------------


class EmaState(NamedTuple):
    """State of :func:`ema`: the number of updates averaged and their moving average."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    ema: Any


def ema(
    decay: float, debias: bool = True, accumulator_dtype: torch.dtype | None = None
) -> GradientTransformation:
    r"""An exponential moving average of the updates.

    .. math::
        m_t = \beta m_{t-1} + (1-\beta) g_t, \qquad
        u_t = \begin{cases} m_t / (1 - \beta^t) & \text{debias} \\ m_t & \text{otherwise}
        \end{cases}

    with ``β = decay`` and :math:`m_0 = 0`. (``trace`` is the undamped
    :math:`\beta m + g`.)

    Args:
        decay: ``β`` in ``[0, 1)`` (a float or a scalar tensor).
        debias: divide by :math:`1-\beta^t` (Adam's bias correction).
        accumulator_dtype: dtype in which ``m`` is stored (default: the updates').

    Returns:
        A transformation with :class:`EmaState`.

    Example:
        >>> import torch
        >>> tx = ema(0.5)
        >>> s = tx.init({"w": torch.zeros(1)})
        >>> u, s = tx.update({"w": torch.ones(1)}, s)
        >>> u["w"], s.ema["w"]
        (tensor([1.]), tensor([0.5000]))
    """
    C.check_unit_interval("decay", decay)

    def init(params: Params) -> EmaState:
        zeros = tree.zeros_like(params)
        if accumulator_dtype is not None:
            zeros = tree.map(lambda x: x.to(accumulator_dtype), zeros)
        return EmaState(C.zero_count(params), zeros)

    def update(
        updates: Updates, state: EmaState, params: Params | None = None
    ) -> tuple[Updates, EmaState]:
        g, treedef, _ = C.leaves_of(updates, params, who="ema", state=state, state_type=EmaState)
        m = C.state_leaves(state.ema, treedef, updates, "ema", "ema")
        m = [a if a.dtype == b.dtype else a.to(b.dtype) for a, b in zip(m, g, strict=True)]
        new = F.ema(m, g, decay)
        out = new
        if debias:
            t = C.step_number(state.count)
            out = F.scale(new, 1.0 / (1.0 - torch.as_tensor(decay, dtype=torch.float64) ** t))
        if accumulator_dtype is not None:
            new = [x.to(accumulator_dtype) for x in new]
        return tree.unflatten(treedef, out), EmaState(state.count + 1, tree.unflatten(treedef, new))

    return GradientTransformation(init, update)


def _new_and_old_leaves(
    new_tensors: Params, old_tensors: Params, who: str
) -> tuple[list[Tensor], list[Tensor], Any]:
    """``(new leaves, old leaves, treedef)``; eagerly ``old_tensors`` must match ``new_tensors``."""
    if _eager.validating():
        _validation.check_tree(
            old_tensors,
            new_tensors,
            got_name="old_tensors",
            expected_name="new_tensors",
            context=who,
        )
    new_lv, treedef = tree.flatten(new_tensors)
    return new_lv, tree.leaves(old_tensors), treedef


def incremental_update(
    new_tensors: Params, old_tensors: Params, step_size: float | Tensor
) -> Params:
    r"""A moving average of params (Polyak averaging, target networks): one step of it.

    :math:`\bar\theta' = \tau\,\theta + (1-\tau)\,\bar\theta` leafwise, with
    ``θ = new_tensors``, ``θ̄ = old_tensors``, ``τ = step_size``.

    Args:
        new_tensors: the latest params ``θ``.
        old_tensors: the average so far ``θ̄`` (same structure).
        step_size: ``τ`` (a float or a scalar tensor, e.g. ``1 - decay``).

    Returns:
        The new average (new tensors; the inputs are unchanged).

    Example:
        >>> import torch
        >>> incremental_update({"w": torch.ones(2)}, {"w": torch.zeros(2)}, 0.1)
        {'w': tensor([0.1000, 0.1000])}
    """
    if _eager.validating():
        C.check_unit_interval("step_size", step_size, closed=True)
    new_lv, old_lv, treedef = _new_and_old_leaves(new_tensors, old_tensors, "incremental_update")
    return tree.unflatten(treedef, F.linear_combination(new_lv, step_size, old_lv, 1.0 - step_size))


def periodic_update(
    new_tensors: Params, old_tensors: Params, steps: Tensor | int, update_period: int
) -> Params:
    r"""A periodic copy of params: ``new_tensors`` when ``steps % update_period == 0``.

    :math:`\bar\theta' = \theta` if :math:`\text{steps} \bmod P = 0`, else
    :math:`\bar\theta`; the choice is a ``torch.where`` on a scalar tensor, so a
    compiled step does not recompile as ``steps`` advances.

    Args:
        new_tensors: the latest params ``θ``.
        old_tensors: the slow copy ``θ̄``.
        steps: the step count (an int tensor, or an int).
        update_period: ``P``, a positive int.

    Returns:
        The new slow copy (new tensors).

    Example:
        >>> import torch
        >>> periodic_update({"w": torch.ones(1)}, {"w": torch.zeros(1)}, torch.tensor(4), 2)
        {'w': tensor([1.])}
    """
    if isinstance(update_period, bool) or not isinstance(update_period, int) or update_period < 1:
        raise ValueError(
            f"periodic_update: update_period must be an int >= 1; got {update_period!r}"
        )
    new_lv, old_lv, treedef = _new_and_old_leaves(new_tensors, old_tensors, "periodic_update")
    take = torch.as_tensor(steps) % update_period == 0
    return tree.unflatten(treedef, F.where(take, new_lv, old_lv))
