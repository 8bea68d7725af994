r"""L-BFGS as a pure minimiser of a loss function, step for step identical to ``torch.optim.LBFGS``.

L-BFGS re-evaluates the loss several times per step (once per inner iteration,
and at every trial point of a line search), so it cannot be an
``update(grads, state)`` transformation: it is given the loss function itself::

    opt = fdl.optim.lbfgs(lr=1.0, history_size=10, line_search_fn="strong_wolfe")
    state = opt.init(params)
    params, state, loss = opt.step(loss_fn, params, state)   # loss_fn(params) -> scalar

``loss`` is the loss at the incoming ``params`` (what ``torch.optim.LBFGS.step(closure)``
returns). The state is a :class:`LBFGSState` of tensors with fixed shapes: the
last ``history_size`` curvature pairs ``(s, y)`` as two ``(history_size, n)``
matrices (``n`` the number of parameters), filled oldest first with
``num_old`` rows in use, plus the last direction, step length, gradient, loss
and counters. Nothing passed in is modified.

**The two-loop recursion** (Nocedal & Wright, Algorithm 7.4) turns the gradient
``g`` into the direction ``d = -H g`` with the history ``(s_i, y_i)``,
``ρ_i = 1 / (y_i·s_i)``, newest ``i`` first::

    q = -g
    for i = m-1 .. 0:   α_i = ρ_i s_i·q;   q = q - α_i y_i
    r = γ q             with γ = H_diag = (y·s) / (y·y) of the newest pair
    for i = 0 .. m-1:   β_i = ρ_i y_i·r;   r = r + (α_i - β_i) s_i
    d = r

A pair ``(s = t d, y = g_new - g_old)`` enters the history only when
``y·s > 1e-10`` (curvature condition); the oldest pair leaves when it is full.
The first iteration of the first step takes ``d = -g`` and
``t = min(1, 1/‖g‖₁) · lr``; later iterations ``t = lr``, or the step length
found by the strong-Wolfe line search (:func:`strong_wolfe`). Each step runs
at most ``max_iter`` iterations and ``max_eval`` loss evaluations, stopping
early when ``max|g| <= tolerance_grad``, when ``g·d > -tolerance_change``, when
``max|t d| <= tolerance_change`` or when the loss changed by less than
``tolerance_change``.

**Why a step takes the loss function** (the Optax/JAX way of writing this:
jaxopt's ``LBFGS(fun).update(params, state, *args)``; ``optax.lbfgs`` takes
``value``, ``grad`` and ``value_fn`` as extra arguments of ``update``): the
number of evaluations per step depends on the values, as torch's does, so the
step's loop and the line search run in Python on scalar
values read back from the device, while every tensor in the state keeps its
shape from step to step (a checkpoint, or a compiled train loop around it,
sees the same tree). The expensive part, the loss and its gradient, can be
compiled: pass ``value_and_grad=True`` and a compiled function returning
``(loss, grads)``.

Example:
    >>> import torch, fdl
    >>> def rosenbrock(p):
    ...     x, y = p["x"], p["y"]
    ...     return (1 - x) ** 2 + 100 * (y - x**2) ** 2
    >>> opt = fdl.optim.lbfgs(line_search_fn="strong_wolfe")
    >>> f64 = torch.float64
    >>> params = {"x": torch.tensor(-1.5, dtype=f64), "y": torch.tensor(2.0, dtype=f64)}
    >>> state = opt.init(params)
    >>> for _ in range(3):
    ...     params, state, loss = opt.step(rosenbrock, params, state)
    >>> round(float(params["x"]), 6), round(float(params["y"]), 6)
    (1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from fdl import tree

__all__ = ["LBFGSState", "Minimizer", "lbfgs", "strong_wolfe"]

Tensor = torch.Tensor
Params = Any


class LBFGSState(NamedTuple):
    """The state of :func:`lbfgs`: torch's ``LBFGS.state`` with fixed shapes.

    ``n`` is the number of parameters, ``m`` the ``history_size``; vectors are
    in the params' dtype, the step length and loss in float64 (torch keeps them
    as Python floats).

    Attributes:
        func_evals: loss evaluations so far (int64).
        n_iter: inner iterations so far, over all steps (int64).
        d: the last search direction ``(n,)``.
        t: the last step length.
        old_dirs: ``y_i`` (gradient differences), ``(m, n)``, oldest first.
        old_stps: ``s_i`` (parameter steps), ``(m, n)``, oldest first.
        ro: ``1 / (y_i·s_i)``, ``(m,)``.
        num_old: rows of the history in use (int64).
        H_diag: ``γ``, the scale of the initial inverse Hessian.
        prev_flat_grad: the gradient ``(n,)`` at the start of the last iteration.
        prev_loss: the loss at the start of the last iteration.
    """

    func_evals: Tensor
    n_iter: Tensor
    d: Tensor
    t: Tensor
    old_dirs: Tensor
    old_stps: Tensor
    ro: Tensor
    num_old: Tensor
    H_diag: Tensor
    prev_flat_grad: Tensor
    prev_loss: Tensor


class Minimizer(NamedTuple):
    """An optimizer that is handed the loss function: ``(init, step)``.

    ``init(params) -> state``; ``step(loss_fn, params, state, *args,
    value_and_grad=False) -> (params, state, loss)``, where ``loss_fn(params,
    *args)`` returns the scalar loss (or ``(loss, grads)`` with
    ``value_and_grad=True``) and ``loss`` is its value at the incoming params.

    Example:
        >>> import torch, fdl
        >>> opt = fdl.optim.lbfgs(max_iter=5)
        >>> p = {"w": torch.ones(2, dtype=torch.float64)}
        >>> p, s, loss = opt.step(lambda p: (p["w"] ** 2).sum(), p, opt.init(p))
        >>> float(loss), p["w"].abs().max().item() < 1e-6
        (2.0, True)
    """

    init: Callable[[Params], LBFGSState]
    step: Callable[..., tuple[Params, LBFGSState, Tensor]]


# ---------------------------------------------------------------------------
# flat vectors <-> params
# ---------------------------------------------------------------------------


def _flat(leaves: list[Tensor]) -> Tensor:
    return torch.cat([x.reshape(-1) for x in leaves])


def _moved(leaves: list[Tensor], t: float, d: Tensor) -> list[Tensor]:
    """``p + t d`` per leaf (one ``add`` per parameter, as torch's ``_add_grad``)."""
    out, offset = [], 0
    for p in leaves:
        n = p.numel()
        out.append(torch.add(p, d[offset : offset + n].view_as(p), alpha=t))
        offset += n
    return out


# ---------------------------------------------------------------------------
# the strong-Wolfe line search
# ---------------------------------------------------------------------------


def _cubic_interpolate(
    x1: float,
    f1: float,
    g1: float,
    x2: float,
    f2: float,
    g2: float,
    bounds: tuple[float, float] | None = None,
) -> float:
    r"""The minimiser of the cubic through ``(x1, f1, g1)`` and ``(x2, f2, g2)``, clipped to bounds.

    .. math::
        d_1 = g_1 + g_2 - 3\frac{f_1 - f_2}{x_1 - x_2},\quad
        d_2 = \sqrt{d_1^2 - g_1 g_2},\quad
        x^* = x_2 - (x_2 - x_1)\frac{g_2 + d_2 - d_1}{g_2 - g_1 + 2 d_2}

    (with the roles of the points swapped when ``x1 > x2``); the bounds'
    midpoint when ``d_1^2 < g_1 g_2`` (no real minimiser). The bounds default
    to ``[min(x1, x2), max(x1, x2)]``.
    """
    if bounds is not None:
        lo, hi = bounds
    else:
        lo, hi = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square < 0:
        return (lo + hi) / 2.0
    d2 = math.sqrt(d2_square)
    if x1 <= x2:
        min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(min_pos, lo), hi)


def strong_wolfe(
    obj_func: Callable[[float], tuple[float, Tensor]],
    t: float,
    d: Tensor,
    f: float,
    g: Tensor,
    gtd: float,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
) -> tuple[float, Tensor, float, int]:
    r"""A step length satisfying the strong Wolfe conditions along ``d``, by bracketing and zoom.

    With :math:`\phi(t) = f(x + t d)` and :math:`\phi'(t) = \nabla f(x + t d)\cdot d`,
    the conditions are sufficient decrease and curvature,

    .. math::
        \phi(t) \le \phi(0) + c_1 t \phi'(0), \qquad |\phi'(t)| \le -c_2 \phi'(0).

    The bracketing phase extrapolates by cubic interpolation within
    ``[t + 0.01 (t - t_prev), 10 t]`` until a point satisfies both or an
    interval ``[lo, hi]`` must contain one (the decrease fails, the loss rose,
    or :math:`\phi' \ge 0`); the zoom phase then shrinks the interval by cubic
    interpolation, moving a trial point that falls within ``0.1·|hi - lo|`` of
    an end to that distance (after two such trials in a row, or at an end),
    until the conditions hold, ``|hi - lo|·max|d| < tolerance_change``, or
    ``max_ls`` trials were made. The port of torch's ``_strong_wolfe``
    (itself from minFunc's ``lswolfe``), on Python floats.

    Args:
        obj_func: ``t -> (loss, flat gradient)`` at ``x + t d``.
        t: the first trial step.
        d: the direction (flat).
        f, g, gtd: loss, flat gradient and :math:`\phi'(0) = g\cdot d` at ``t = 0``.
        c1, c2: the Wolfe constants.
        tolerance_change: the smallest bracket (scaled by ``max|d|``).
        max_ls: the most trials after the first.

    Returns:
        ``(loss, flat gradient, t, evaluations)`` at the accepted step.

    Example:
        >>> import torch
        >>> phi = lambda t: ((t - 2.0) ** 2, torch.tensor([2 * (t - 2.0)]))  # minimum at t = 2
        >>> d, g0 = torch.tensor([1.0]), torch.tensor([-4.0])
        >>> f, g, t, n = strong_wolfe(phi, 0.1, d, 4.0, g0, -4.0, c2=0.1)
        >>> round(t, 5), n
        (2.0, 3)
    """
    d_norm = float(d.abs().max())
    f_new, g_new = obj_func(t)
    evals = 1
    gtd_new = float(g_new.dot(d))

    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done = False
    ls_iter = 0
    bracket: list[float] = []
    bracket_f: list[float] = []
    bracket_g: list[Tensor] = []
    bracket_gtd: list[float] = []
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        # extrapolate by cubic interpolation within [t + 0.01 (t - t_prev), 10 t]
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        t_prev, t = (
            t,
            _cubic_interpolate(
                t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step)
            ),
        )
        f_prev, g_prev, gtd_prev = f_new, g_new, gtd_new
        f_new, g_new = obj_func(t)
        evals += 1
        gtd_new = float(g_new.dot(d))
        ls_iter += 1

    if ls_iter == max_ls:  # no bracket found: the interval from 0 to the last trial
        bracket, bracket_f, bracket_g = [0.0, t], [f, f_new], [g, g_new]

    # zoom: shrink the bracket until a point satisfies the criteria
    insuf_progress = False
    low, high = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(
            bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1]
        )
        # keep the trial 0.1 * |bracket| away from its ends after slow progress
        b_max, b_min = max(bracket), min(bracket)
        eps = 0.1 * (b_max - b_min)
        if min(b_max - t, t - b_min) < eps:
            if insuf_progress or t >= b_max or t <= b_min:
                t = b_max - eps if abs(t - b_max) < abs(t - b_min) else b_min + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        f_new, g_new = obj_func(t)
        evals += 1
        gtd_new = float(g_new.dot(d))
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low]:
            # no sufficient decrease, or not below the low end: the trial is the new high end
            bracket[high], bracket_f[high] = t, f_new
            bracket_g[high], bracket_gtd[high] = g_new, gtd_new
            low, high = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                # the old high end becomes the low end
                bracket[high], bracket_f[high] = bracket[low], bracket_f[low]
                bracket_g[high], bracket_gtd[high] = bracket_g[low], bracket_gtd[low]
            bracket[low], bracket_f[low] = t, f_new
            bracket_g[low], bracket_gtd[low] = g_new, gtd_new

    return bracket_f[low], bracket_g[low], bracket[low], evals


# ---------------------------------------------------------------------------
# the two-loop recursion on a fixed-size history
# ---------------------------------------------------------------------------


def _push(buf: Tensor, row: Tensor, num_old: int) -> Tensor:
    """``buf`` with ``row`` appended after its ``num_old`` rows, the oldest dropped when full."""
    if num_old == buf.shape[0]:
        return torch.cat([buf[1:], row[None]])  # (m, n): shift out the oldest
    out = buf.clone()
    out[num_old] = row
    return out


def _direction(
    g: Tensor, old_dirs: Tensor, old_stps: Tensor, ro: Tensor, m: int, h: Tensor
) -> Tensor:
    """``-H g`` by the two-loop recursion over the first ``m`` pairs (``al`` as torch's)."""
    q = g.neg()
    al = [torch.zeros(())] * m
    for i in range(m - 1, -1, -1):
        al[i] = old_stps[i].dot(q) * ro[i]
        q = torch.add(q, old_dirs[i], alpha=-float(al[i]))
    r = torch.mul(q, h)
    for i in range(m):
        be_i = old_dirs[i].dot(r) * ro[i]
        r = torch.add(r, old_stps[i], alpha=float(al[i] - be_i))
    return r


# ---------------------------------------------------------------------------
# the optimizer
# ---------------------------------------------------------------------------


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r} (expected {expected})")


def lbfgs(
    lr: float = 1.0,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: str | None = None,
    *,
    maximize: bool = False,
) -> Minimizer:
    r"""L-BFGS, ``torch.optim.LBFGS``'s algorithm as a pure :class:`Minimizer`.

    One ``step`` runs up to ``max_iter`` iterations of

    .. math::
        d_k = -H_k g_k, \qquad x_{k+1} = x_k + t_k d_k,

    with :math:`H_k g_k` from the two-loop recursion over the last
    ``history_size`` pairs :math:`s_i = t_i d_i`, :math:`y_i = g_{i+1} - g_i`
    (kept when :math:`y_i\cdot s_i > 10^{-10}`), initial scale
    :math:`\gamma = y\cdot s / y\cdot y` of the newest pair, and
    :math:`t_k = \texttt{lr}` (the very first iteration:
    :math:`\min(1, 1/\|g\|_1)\,\texttt{lr}` along :math:`-g`), or the
    strong-Wolfe step (:func:`strong_wolfe`, ``c1=1e-4``, ``c2=0.9``, at most
    ``max_eval`` evaluations in the step) from that initial guess. See the module
    docstring for the recursion and the stopping rules, which are torch's.

    Args:
        lr: the step length (the line search's first trial with ``'strong_wolfe'``).
        max_iter: iterations per step.
        max_eval: loss evaluations per step (default ``max_iter * 5 // 4``).
        tolerance_grad: stop when ``max|g| <= tolerance_grad``.
        tolerance_change: stop when the loss, or ``max|t d|``, changes less.
        history_size: curvature pairs kept (the state holds ``2 · history_size``
            vectors of the parameters' size from the start).
        line_search_fn: ``None`` (fixed step ``lr``) or ``'strong_wolfe'``.
        maximize: maximise the loss instead.

    Returns:
        A :class:`Minimizer`: ``state = opt.init(params)``;
        ``params, state, loss = opt.step(loss_fn, params, state, *args)``.
        The params' leaves must be floating tensors of one dtype and device.

    Note:
        torch computes the line search's scalars partly in the parameters'
        dtype; fdl computes them in float64, so the two agree exactly in
        float64 and to float32 rounding otherwise. torch raises for an unknown
        ``line_search_fn`` at the first step; fdl at construction.

    Example:
        >>> import torch, fdl
        >>> A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> loss_fn = lambda p: 0.5 * p["x"] @ A @ p["x"] - p["x"].sum()
        >>> opt = fdl.optim.lbfgs(history_size=5)
        >>> p = {"x": torch.zeros(2, dtype=torch.float64)}
        >>> p, state, loss = opt.step(loss_fn, p, opt.init(p))
        >>> torch.allclose(p["x"], torch.linalg.solve(A, torch.ones(2, dtype=torch.float64)))
        True
    """
    if isinstance(lr, Tensor):
        _check("learning rate", lr, lr.numel() == 1, "a 1-element tensor")
        lr = float(lr)
    _check("learning rate", lr, lr >= 0.0, ">= 0")
    _check("max_iter", max_iter, isinstance(max_iter, int) and max_iter >= 1, "an int >= 1")
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    _check("max_eval", max_eval, isinstance(max_eval, int) and max_eval >= 1, "an int >= 1")
    _check(
        "history_size",
        history_size,
        isinstance(history_size, int) and history_size >= 1,
        "an int >= 1",
    )
    _check(
        "line_search_fn",
        line_search_fn,
        line_search_fn in (None, "strong_wolfe"),
        "None or 'strong_wolfe'",
    )
    sign = -1.0 if maximize else 1.0

    def build(n: int, dtype: torch.dtype, device: torch.device | str) -> LBFGSState:
        vec = torch.zeros(n, dtype=dtype, device=device)
        z64 = torch.zeros((), dtype=torch.float64, device=device)
        zi = torch.zeros((), dtype=torch.int64, device=device)
        return LBFGSState(
            func_evals=zi,
            n_iter=zi,
            d=vec,
            t=z64,
            old_dirs=vec.new_zeros(history_size, n),
            old_stps=vec.new_zeros(history_size, n),
            ro=vec.new_zeros(history_size),
            num_old=zi,
            H_diag=vec.new_ones(()),
            prev_flat_grad=vec,
            prev_loss=z64,
        )

    def init(params: Params) -> LBFGSState:
        leaves = tree.leaves(params)
        _check_leaves(leaves)
        first = leaves[0]
        return build(sum(p.numel() for p in leaves), first.dtype, first.device)

    def step(
        loss_fn: Callable[..., Any],
        params: Params,
        state: LBFGSState,
        *args: Any,
        value_and_grad: bool = False,
    ) -> tuple[Params, LBFGSState, Tensor]:
        leaves, treedef = tree.flatten(params)
        _check_leaves(leaves)
        if not isinstance(state, LBFGSState):
            raise ValueError(
                f"lbfgs.step: the state is a {type(state).__name__}, expected the LBFGSState "
                "that lbfgs.init builds"
            )
        n = sum(p.numel() for p in leaves)
        tree.check_match(
            state,
            build(n, leaves[0].dtype, "meta"),  # shapes and dtypes only: nothing allocated
            got_name="the state",
            expected_name="the state lbfgs.init builds for params",
            check_shapes=True,
            check_dtypes=True,
            context="lbfgs.step",
        )
        vg = loss_fn if value_and_grad else torch.func.grad_and_value(loss_fn)

        def evaluate(x: list[Tensor]) -> tuple[Tensor, float, Tensor]:
            out = vg(tree.unflatten(treedef, x), *args)
            loss, grads = (out[0], out[1]) if value_and_grad else (out[1], out[0])
            flat_grad = _flat(tree.leaves(grads)).to(leaves[0].dtype)
            if maximize:
                flat_grad = flat_grad.neg()
            return loss, sign * float(loss), flat_grad

        params_out, new_state, orig_loss = _run(evaluate, leaves, state)
        return tree.unflatten(treedef, params_out), new_state, orig_loss

    def _run(
        evaluate: Callable[[list[Tensor]], tuple[Tensor, float, Tensor]],
        x: list[Tensor],
        state: LBFGSState,
    ) -> tuple[list[Tensor], LBFGSState, Tensor]:
        func_evals = int(state.func_evals)
        state_iter = int(state.n_iter)
        orig_loss, loss, flat_grad = evaluate(x)
        current_evals = 1
        func_evals += 1
        if float(flat_grad.abs().max()) <= tolerance_grad:
            return x, state._replace(func_evals=_like(state.func_evals, func_evals)), orig_loss

        d, t = state.d, float(state.t)
        old_dirs, old_stps, ro = state.old_dirs, state.old_stps, state.ro
        num_old, h_diag = int(state.num_old), state.H_diag
        prev_flat_grad, prev_loss = state.prev_flat_grad, float(state.prev_loss)

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state_iter += 1
            if state_iter == 1:  # the first iteration ever: steepest descent
                d = flat_grad.neg()
                num_old, h_diag = 0, torch.ones_like(h_diag)
                old_dirs, old_stps = torch.zeros_like(old_dirs), torch.zeros_like(old_stps)
                ro = torch.zeros_like(ro)
            else:
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if float(ys) > 1e-10:  # curvature condition: keep the pair
                    old_dirs = _push(old_dirs, y, num_old)
                    old_stps = _push(old_stps, s, num_old)
                    ro = _push(ro, 1.0 / ys, num_old)
                    num_old = min(num_old + 1, history_size)
                    h_diag = ys / y.dot(y)
                d = _direction(flat_grad, old_dirs, old_stps, ro, num_old, h_diag)
            prev_flat_grad = flat_grad
            prev_loss = loss

            if state_iter == 1:
                t = min(1.0, 1.0 / float(flat_grad.abs().sum())) * lr
            else:
                t = lr
            gtd = float(flat_grad.dot(d))
            if gtd > -tolerance_change:  # not a descent direction
                break

            ls_func_evals = 0
            opt_cond = False
            if line_search_fn is not None:
                x_init = x

                def obj_func(
                    t_: float, x_init: list[Tensor] = x_init, d: Tensor = d
                ) -> tuple[float, Tensor]:
                    _, f_, g_ = evaluate(_moved(x_init, t_, d))
                    return f_, g_

                loss, flat_grad, t, ls_func_evals = strong_wolfe(
                    obj_func, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
                )
                x = _moved(x_init, t, d)
                opt_cond = float(flat_grad.abs().max()) <= tolerance_grad
            else:
                x = _moved(x, t, d)
                if n_iter != max_iter:  # the last iteration leaves the new point unevaluated
                    _, loss, flat_grad = evaluate(x)
                    opt_cond = float(flat_grad.abs().max()) <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            func_evals += ls_func_evals

            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if float(d.mul(t).abs().max()) <= tolerance_change:  # no progress in x
                break
            if abs(loss - prev_loss) < tolerance_change:  # no progress in the loss
                break

        new_state = LBFGSState(
            func_evals=_like(state.func_evals, func_evals),
            n_iter=_like(state.n_iter, state_iter),
            d=d,
            t=_like(state.t, t),
            old_dirs=old_dirs,
            old_stps=old_stps,
            ro=ro,
            num_old=_like(state.num_old, num_old),
            H_diag=h_diag.to(state.H_diag.dtype).reshape(()),
            prev_flat_grad=prev_flat_grad,
            prev_loss=_like(state.prev_loss, prev_loss),
        )
        return x, new_state, orig_loss

    return Minimizer(init, step)


def _like(ref: Tensor, value: float | int) -> Tensor:
    return torch.tensor(value, dtype=ref.dtype, device=ref.device)


def _check_leaves(leaves: list[Tensor]) -> None:
    if not leaves:
        raise ValueError("lbfgs: params has no tensors to optimize")
    first = leaves[0]
    for p in leaves:
        if not isinstance(p, Tensor) or not p.is_floating_point():
            raise ValueError(f"lbfgs: every parameter must be a floating tensor; got {p!r:.60}")
        if p.dtype != first.dtype or p.device != first.device:
            raise ValueError(
                "lbfgs: every parameter must have one dtype and device (torch.optim.LBFGS "
                f"concatenates them); got {first.dtype}/{first.device} and {p.dtype}/{p.device}"
            )
