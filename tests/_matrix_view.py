"""A test adapter that shows every leaf to an optimizer as a matrix (for Muon, 2-D only).

``as_matrices(tx)`` runs ``tx`` on ``(1, n)`` views of vectors and ``(1, 1)``
views of scalars (matrices pass as they are) and reshapes the updates back, so
the generic optimizer properties, written for params with vectors and
scalars, also exercise Muon's own blocks on every leaf. A row vector's
orthogonalisation is its normalisation (up to the Newton-Schulz polynomial).
"""

from __future__ import annotations

from typing import Any

import fdl


def _as_matrix(x: Any) -> Any:
    return x.reshape(1, -1) if x.ndim < 2 else x  # (n,) -> (1, n); () -> (1, 1)


def as_matrices(tx: fdl.optim.GradientTransformation) -> fdl.optim.GradientTransformation:
    """``tx`` on matrix views of the leaves; its state holds the matrix shapes."""

    def init(params: Any) -> Any:
        return tx.init(fdl.tree.map(_as_matrix, params))

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        if params is not None and fdl._eager.validating():  # shapes checked, as a chain does
            fdl.tree.check_match(
                updates,
                params,
                got_name="the gradients",
                expected_name="the params",
                check_shapes=True,
                context="as_matrices",
            )
        shapes = [x.shape for x in fdl.tree.leaves(updates)]
        views = fdl.tree.map(_as_matrix, updates)
        out, state = tx.update(
            views, state, None if params is None else fdl.tree.map(_as_matrix, params)
        )
        leaves, treedef = fdl.tree.flatten(out)
        return fdl.tree.unflatten(
            treedef, [x.reshape(s) for x, s in zip(leaves, shapes, strict=True)]
        ), state

    return fdl.optim.GradientTransformation(init, update)
