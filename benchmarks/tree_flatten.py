"""Pytree overhead: flattening, rebuilding and mapping a 100-leaf tree.

Every fdl step flattens its params, gradients and optimizer state, so this
cost is paid per step outside any kernel. The tree is shaped like a model's
params: 50 layers, each ``{"weight", "bias"}``, inside a NamedTuple next to a
step count (101 leaves). Peers: ``fdl`` (``fdl.tree``, optree underneath),
``optree`` called directly, ``torch.utils._pytree`` (what ``torch.func``
uses), ``jax.tree_util`` when jax is installed, and a plain Python loop
collecting the same leaves (a yardstick for the machine's speed).

Run: ``python -m benchmarks.tree_flatten`` (``--quick`` for fewer repeats).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import optree
import torch
import torch.utils._pytree as tpytree

import fdl
from benchmarks._harness import Result, format_table, measure, result, threads_note


class _State(NamedTuple):
    count: torch.Tensor
    params: dict


def _tree(layers: int = 50) -> _State:
    params = {
        f"layer{i}": {"weight": torch.zeros(4, 4), "bias": torch.zeros(4)} for i in range(layers)
    }
    return _State(torch.zeros((), dtype=torch.int64), params)


def _peers(tree: Any) -> dict[str, dict[str, Callable[[], Any]]]:
    _, fdl_def = fdl.tree.flatten(tree)
    fdl_leaves = fdl.tree.leaves(tree)
    _, t_spec = tpytree.tree_flatten(tree)
    t_leaves = tpytree.tree_leaves(tree)
    peers: dict[str, dict[str, Callable[[], Any]]] = {
        "flatten": {
            "fdl": lambda: fdl.tree.flatten(tree),
            "optree": lambda: optree.tree_flatten(tree),
            "torch.utils._pytree": lambda: tpytree.tree_flatten(tree),
            # machine-speed reference: a Python loop collecting the same leaves
            "python loop (reference)": lambda: (
                [tree.count] + [x for layer in tree.params.values() for x in layer.values()]
            ),
        },
        "unflatten": {
            "fdl": lambda: fdl.tree.unflatten(fdl_def, fdl_leaves),
            "optree": lambda: optree.tree_unflatten(fdl_def, fdl_leaves),
            "torch.utils._pytree": lambda: tpytree.tree_unflatten(t_leaves, t_spec),
        },
        "map x + y over two trees": {
            "fdl": lambda: fdl.tree.map(torch.Tensor.add, tree, tree),
            "optree": lambda: optree.tree_map(torch.Tensor.add, tree, tree),
            "torch.utils._pytree": lambda: tpytree.tree_map(torch.Tensor.add, tree, tree),
        },
    }
    try:
        import jax

        peers["flatten"]["jax.tree_util"] = lambda: jax.tree_util.tree_flatten(tree)
        _, j_def = jax.tree_util.tree_flatten(tree)
        peers["unflatten"]["jax.tree_util"] = lambda: jax.tree_util.tree_unflatten(
            j_def, fdl_leaves
        )
    except ImportError:  # jax is optional
        pass
    return peers


def run(quick: bool = False) -> list[Result]:
    """Time each operation for each peer: median over repeats of 1000 calls."""
    tree = _tree()
    n_leaves = len(fdl.tree.leaves(tree))
    repeats, number = (5, 200) if quick else (15, 1000)
    out = []
    for op, peers in _peers(tree).items():
        for peer, fn in peers.items():
            t = measure(fn, warmup=2, repeats=repeats, number=number)
            out.append(result(f"{op}, {n_leaves}-leaf tree", peer, t, note=threads_note()))
    return out


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
    print(threads_note())
