"""Orthogonalised updates: Muon's Newton–Schulz iteration and its shape-dependent step size.

A matrix update ``G = U S Vᵀ`` is replaced by (approximately) ``U Vᵀ``: every
singular value becomes about 1, so the step has the same size in every
direction. The iteration is a quintic polynomial in ``X Xᵀ`` (Jordan et al.,
2024), run in bfloat16 as ``torch.optim.Muon`` runs it. Only 2-D parameters
are accepted, as torch requires; give the others another optimizer with
:func:`fdl.optim.masked` (see :func:`fdl.optim.muon`).
"""

from __future__ import annotations

import math

import torch

from fdl import tree
from fdl.optim import _common as C
from fdl.optim import _validation
from fdl.optim.base import EmptyState, GradientTransformation, Params, Updates

__all__ = ["newton_schulz", "orthogonalize", "scale_by_shape"]

Tensor = torch.Tensor
Leaves = list[Tensor]

# torch.optim.Muon's quintic coefficients (a, b, c)
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
ADJUST_LR_FNS = ("original", "match_rms_adamw", "spectral_unclamped")


def newton_schulz(
    g: Tensor,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    steps: int = 5,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    r"""``steps`` Newton–Schulz iterations towards the orthogonal factor of the matrix ``g``.

    .. math::
        X_0 = \frac{G}{\max(\lVert G\rVert_F,\ \epsilon)}, \qquad
        A_k = X_k X_k^\top, \qquad
        X_{k+1} = a X_k + (b A_k + c A_k^2)\, X_k

    computed in ``dtype`` on the wide orientation (``G`` is transposed when it
    has more rows than columns, so ``A`` is the smaller Gram matrix) and
    returned in ``g``'s dtype. The coefficients push the singular values into
    about ``[0.7, 1.2]`` rather than exactly to 1.

    Example:
        >>> import torch
        >>> g = torch.tensor([[3.0, 0.0], [0.0, 0.1]])
        >>> s = torch.linalg.svdvals(newton_schulz(g, dtype=torch.float32))
        >>> bool(((s > 0.6) & (s < 1.3)).all())  # both singular values near 1
        True
    """
    if g.dim() != 2:
        raise ValueError("Input tensor gradient must be a 2D matrix")
    a, b, c = coefficients
    wide = g.size(0) <= g.size(1)
    x = g.to(dtype) if wide else g.to(dtype).T  # (R, C) -> (min, max)
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T  # (m, n) @ (n, m) -> (m, m)
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A²
        x = torch.addmm(x, poly, x, beta=a)  # a X + (b A + c A²) X
    return (x if wide else x.T).to(g.dtype)  # (min, max) -> (R, C)


def _check_matrices(params: Params) -> None:
    for path, p in zip(tree.paths(params), tree.leaves(params), strict=True):
        if p.ndim != 2:
            raise ValueError(
                f"Muon only supports 2D parameters whereas we found a parameter with size: "
                f"{p.size()} (at '{path}'; give the others another optimizer with "
                "fdl.optim.masked)"
            )


def orthogonalize(
    ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    *,
    dtype: torch.dtype = torch.bfloat16,
) -> GradientTransformation:
    r"""Replace each (2-D) update by its orthogonalisation, :math:`u = \mathrm{NS}(g)`.

    See :func:`newton_schulz`. ``init`` rejects parameters that are not
    matrices, with ``torch.optim.Muon``'s message.

    Args:
        ns_coefficients: ``(a, b, c)``.
        ns_steps: the number of iterations (fewer than 100).
        eps: ``ε``, the smallest norm divided by.
        dtype: the dtype of the iteration; torch's is bfloat16 (a wider one gives
            smooth updates, e.g. to differentiate through them).

    Returns:
        A stateless transformation.

    Example:
        >>> import torch
        >>> tx = orthogonalize()
        >>> u, _ = tx.update({"w": torch.eye(3) * 5.0}, tx.init({"w": torch.zeros(3, 3)}))
        >>> u["w"].diagonal().shape
        torch.Size([3])
    """
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    if len(ns_coefficients) != 3:
        raise ValueError("Coefficients must be a tuple of exactly 3 values")

    def init(params: Params) -> EmptyState:
        _check_matrices(params)
        return EmptyState()

    def update(
        updates: Updates, state: EmptyState, params: Params | None = None
    ) -> tuple[Updates, EmptyState]:
        g, treedef, _ = C.leaves_of(
            updates, params, who="orthogonalize", state=state, state_type=EmptyState
        )
        if _validation.needed() and any(x.ndim != 2 for x in g):
            raise ValueError("Param gradient must be a 2D matrix")
        out = [newton_schulz(x, ns_coefficients, ns_steps, eps, dtype) for x in g]
        return tree.unflatten(treedef, out), state

    return GradientTransformation(init, update)


def _ratio(shape: torch.Size, rule: str | None) -> float:
    rows, cols = shape[:2]
    if rule is None or rule == "original":
        return math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(rows / cols)  # spectral_unclamped


def scale_by_shape(adjust_lr_fn: str | None = None) -> GradientTransformation:
    r"""Muon's shape-dependent step size: :math:`u = r(R, C)\, g` for an ``R × C`` update.

    .. math::
        r = \begin{cases}
            \sqrt{\max(1, R/C)} & \text{original (default, } \texttt{None}) \\
            0.2\sqrt{\max(R, C)} & \text{match\_rms\_adamw} \\
            \sqrt{R/C} & \text{spectral\_unclamped}
        \end{cases}

    ``match_rms_adamw`` makes the orthogonalised update's RMS that of AdamW
    (about 0.2), so AdamW's learning rate and decay carry over.

    Example:
        >>> import torch
        >>> tx = scale_by_shape("match_rms_adamw")
        >>> tx.update({"w": torch.ones(4, 25)}, tx.init(None))[0]["w"][0, 0]
        tensor(1.)
    """
    if adjust_lr_fn is not None and adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")

    def fn(g: Leaves, p: Leaves | None) -> Leaves:
        return [x * _ratio(x.shape, adjust_lr_fn) for x in g]

    return C.stateless("scale_by_shape", fn)
