"""Factored second moments: Adafactor's row and column statistics, its clipping and relative step.

Adafactor (Shazeer & Stern, 2018) keeps, for a parameter with two or more
dimensions, the running mean of ``g²`` over its last dimension (``row``, shape
``(..., R, 1)``) and over its second-to-last one (``col``, shape ``(..., 1, C)``)
instead of a full second moment: memory ``R + C`` instead of ``R C`` per
matrix. Vectors and scalars keep the full ``v``. The blocks follow
``torch.optim.Adafactor`` (its ``β2`` schedule, eps placement and relative step),
which is where they differ from Optax's ``scale_by_factored_rms``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from fdl import tree
from fdl.optim import _common as C
from fdl.optim import _validation
from fdl.optim.base import GradientTransformation, Params, ScalarOrSchedule

__all__ = [
    "ScaleByFactoredRmsState",
    "ScaleByRelativeStepState",
    "scale_by_factored_rms",
    "scale_by_param_scale",
    "scale_by_relative_step",
]

Tensor = torch.Tensor
Leaves = list[Tensor]


def _factored(x: Tensor) -> bool:
    return x.dim() > 1


def _rms(x: Tensor) -> Tensor:
    """``‖x‖₂ / √n`` as a float64 scalar (the norm in ``x``'s dtype, as torch reads it)."""
    return torch.linalg.vector_norm(x).to(torch.float64) / math.sqrt(x.numel())


class ScaleByFactoredRmsState(NamedTuple):
    """State of :func:`scale_by_factored_rms`: count and, per leaf, the row and column
    factors ``row`` / ``col`` (matrices and up) or the full second moment ``v``
    (vectors and scalars); the fields a leaf does not use hold an empty tensor."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)
    row: Any
    col: Any
    v: Any


def _initial_factors(params: Params) -> dict[str, Any]:
    def empty(p: Tensor) -> Tensor:
        return p.new_zeros((0,))

    def row(p: Tensor) -> Tensor:
        return p.new_zeros((*p.shape[:-1], 1)) if _factored(p) else empty(p)

    def col(p: Tensor) -> Tensor:
        return p.new_zeros((*p.shape[:-2], 1, p.shape[-1])) if _factored(p) else empty(p)

    def full(p: Tensor) -> Tensor:
        return empty(p) if _factored(p) else torch.zeros_like(p)

    return {
        "row": tree.map(row, params),
        "col": tree.map(col, params),
        "v": tree.map(full, params),
    }


def scale_by_factored_rms(
    beta2_decay: float = -0.8, eps1: float | None = None, d: float = 1.0
) -> GradientTransformation:
    r"""Adafactor's scaling by a factored second moment, clipped by its RMS, as torch.

    With ``ρ_t = t^{c}`` (``c = beta2_decay``; ``ρ_1 = 1``), for a leaf of two or
    more dimensions

    .. math::
        r_t = r_{t-1} + \rho_t\big(\mathrm{mean}_{-1}(g_t^2) - r_{t-1}\big), \quad
        k_t = k_{t-1} + \rho_t\big(\mathrm{mean}_{-2}(g_t^2) - k_{t-1}\big), \quad
        \hat v_t = \frac{r_t\, k_t}{\max(\mathrm{mean}_{-2}(r_t),\ \epsilon_1)}

    (``r_t k_t`` the outer product of the last two dimensions), and for a vector
    or scalar :math:`\hat v_t = v_t = v_{t-1} + \rho_t (g_t^2 - v_{t-1})`. Then

    .. math::
        U_t = \frac{g_t}{\sqrt{\max(\hat v_t,\ \epsilon_1^2)}}, \qquad
        u_t = \frac{U_t}{\max\big(1,\ \mathrm{RMS}(U_t) / d\big)}

    Args:
        beta2_decay: ``c <= 0``, the exponent of the second moment's weight ``t^c``.
        eps1: ``ε₁``; ``None`` for the machine epsilon of each parameter's dtype.
        d: the clipping threshold ``d >= 1`` of the update's RMS.

    Returns:
        A transformation with :class:`ScaleByFactoredRmsState`.

    Example:
        >>> import torch
        >>> tx = scale_by_factored_rms()
        >>> s = tx.init({"w": torch.zeros(2, 3)})
        >>> s.row["w"].shape, s.col["w"].shape
        (torch.Size([2, 1]), torch.Size([1, 3]))
        >>> u, s = tx.update({"w": torch.full((2, 3), 4.0)}, s)
        >>> u["w"]  # g / sqrt(v) with v = g**2: ones, RMS 1, not clipped
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    if not 0.0 >= beta2_decay:
        raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
    if eps1 is not None and not 0.0 <= eps1:
        raise ValueError(f"epsilon1 should be >= 0 but is: {eps1}")
    if not 1.0 <= d:
        raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")

    def step(g: Leaves, state: ScaleByFactoredRmsState, row: Leaves, col: Leaves, v: Leaves) -> Any:
        rho = C.step_number(state.count) ** beta2_decay  # float64 scalar: 1 at t = 1

        def leaf(gi: Tensor, ri: Tensor, ki: Tensor, vi: Tensor) -> tuple[Tensor, ...]:
            e1 = torch.finfo(gi.dtype).eps if eps1 is None else eps1
            w = rho.to(gi.dtype)
            if _factored(gi):
                row_mean = gi.square().mean(dim=-1, keepdim=True)  # (..., R, C) -> (..., R, 1)
                col_mean = gi.square().mean(dim=-2, keepdim=True)  # (..., R, C) -> (..., 1, C)
                ri = torch.lerp(ri, row_mean, w)
                ki = torch.lerp(ki, col_mean, w)
                scale = ri.mean(dim=-2, keepdim=True).clamp(min=e1)  # (..., R, 1) -> (..., 1, 1)
                v_hat = (ri @ ki) / scale  # (..., R, 1) @ (..., 1, C) -> (..., R, C)
            else:
                vi = torch.lerp(vi, gi * gi, w)
                v_hat = vi
            ui = torch.rsqrt(v_hat.clamp(min=e1 * e1)) * gi
            clip = torch.clamp(_rms(ui) / d, min=1.0)
            return ui / clip.to(ui.dtype), ri, ki, vi

        return C.leafwise(leaf, g, row=row, col=col, v=v)

    who = "scale_by_factored_rms"

    def init(params: Params) -> ScaleByFactoredRmsState:
        return ScaleByFactoredRmsState(count=C.zero_count(params), **_initial_factors(params))

    def update(
        updates: Any, state: ScaleByFactoredRmsState, params: Params | None = None
    ) -> tuple[Any, ScaleByFactoredRmsState]:
        g, treedef, _ = C.leaves_of(
            updates, params, who=who, state=state, state_type=ScaleByFactoredRmsState
        )
        lists = {name: _factor_leaves(getattr(state, name), treedef, name) for name in _FIELDS}
        out, new = step(g, state, **lists)
        fields = {k: tree.unflatten(treedef, v) for k, v in new.items()}
        return tree.unflatten(treedef, out), ScaleByFactoredRmsState(state.count + 1, **fields)

    return GradientTransformation(init, update)


_FIELDS = ("row", "col", "v")


def _factor_leaves(subtree: Any, treedef: Any, name: str) -> Leaves:
    """Leaves of a factor tree: the updates' structure (shapes are the factors' own)."""
    lv, sub_def = tree.flatten(subtree)
    if _validation.needed() and sub_def != treedef:
        raise ValueError(
            f"scale_by_factored_rms: the state's {name} does not have the structure of the "
            f"updates ({sub_def} vs {treedef})"
        )
    return lv


def scale_by_param_scale(eps2: float = 1e-3) -> GradientTransformation:
    r"""Scale each leaf by the RMS of its parameter (Adafactor's relative step).

    :math:`u = \max(\epsilon_2, \mathrm{RMS}(\theta))\, g`: the step of a parameter is
    proportional to its size.

    Args:
        eps2: ``ε₂ >= 0``, the smallest scale (so that zero params still move).

    Returns:
        A stateless transformation that needs the params.

    Example:
        >>> import torch
        >>> tx = scale_by_param_scale()
        >>> p = {"w": torch.full((4,), 3.0)}
        >>> tx.update({"w": torch.ones(4)}, tx.init(p), p)[0]
        {'w': tensor([3., 3., 3., 3.])}
    """
    if not 0.0 <= eps2:
        raise ValueError(f"epsilon2 should be >= 0 but is: {eps2}")

    def fn(g: Leaves, p: Leaves | None) -> Leaves:
        assert p is not None
        return [
            gi * torch.clamp(_rms(pi), min=eps2).to(gi.dtype) for gi, pi in zip(g, p, strict=True)
        ]

    return C.stateless("scale_by_param_scale", fn, needs_params=True)


class ScaleByRelativeStepState(NamedTuple):
    """State of :func:`scale_by_relative_step`: the number of updates already applied."""

    count: Tensor  # type: ignore[assignment]  # field shadows tuple.count (public name)


def scale_by_relative_step(
    lr: ScalarOrSchedule = 1e-2, weight_decay: float = 0.0
) -> GradientTransformation:
    r"""Adafactor's step size and decay, with the descent's sign.

    :math:`u = -\big(\min(\eta, 1/\sqrt t)\, g + \eta\lambda\theta\big)`.

    The learning rate ``η`` caps the step size ``1/√t``; the decoupled decay
    ``θ ← θ(1 - ηλ)`` uses ``η`` itself, as ``torch.optim.Adafactor`` does. Like
    :func:`fdl.optim.scale_by_learning_rate` it holds the descent's sign flip.

    Args:
        lr: ``η`` (a float, tensor or schedule), ``>= 0``.
        weight_decay: ``λ >= 0``.

    Returns:
        A transformation with :class:`ScaleByRelativeStepState`.

    Example:
        >>> import torch
        >>> tx = scale_by_relative_step(lr=1.0)
        >>> s = tx.init({"w": torch.zeros(1)})
        >>> for _ in range(4):
        ...     u, s = tx.update({"w": torch.ones(1)}, s, {"w": torch.zeros(1)})
        >>> u["w"]  # 1 / sqrt(4)
        tensor([-0.5000])
    """
    if not callable(lr):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        value = C._number("lr", lr, "a number >= 0")
        if value is not None and not 0.0 <= value:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
    wd = C._number("weight_decay", weight_decay, "a number >= 0")
    if wd is not None and not 0.0 <= wd:
        raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")
    decays = isinstance(weight_decay, Tensor) or weight_decay != 0

    def step(g: Leaves, state: ScaleByRelativeStepState, params: Leaves | None) -> Any:
        eta = torch.as_tensor(
            lr(state.count) if callable(lr) else lr, dtype=torch.float64, device=state.count.device
        )
        rho = torch.minimum(eta, 1.0 / torch.sqrt(C.step_number(state.count)))
        out = []
        for j, gi in enumerate(g):
            ui = gi * (-rho).to(gi.dtype)
            if decays:
                assert params is not None
                ui = ui - params[j] * (eta * weight_decay).to(gi.dtype)  # θ(1 - ηλ): decay
            out.append(ui)
        return out, {}

    return C.stateful(
        "scale_by_relative_step",
        ScaleByRelativeStepState,
        step,
        trees=(),
        with_params=True,
        needs_params=decays,
    )
