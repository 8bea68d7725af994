"""Tests for fdl.tree: flattening, structure errors, arithmetic, stacking, flat dicts."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import torch.utils._pytree as tpytree
from hypothesis import given, settings
from hypothesis import strategies as st

from fdl import tree as T
from fdl.testing import assert_trees_close


class AdamLikeState(NamedTuple):
    count: torch.Tensor
    mu: dict
    nu: dict


def _g(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _params(seed: int = 0) -> dict:
    return {
        "fc1": {"weight": _g(4, 3, seed=seed), "bias": _g(4, seed=seed + 1)},
        "fc2": {"weight": _g(2, 4, seed=seed + 2), "bias": _g(2, seed=seed + 3)},
    }


# Trees covering every container kind (name -> builder taking a seed).
TREES: dict[str, Callable[[int], Any]] = {
    "params": _params,
    "namedtuple_state": lambda s: AdamLikeState(
        torch.tensor(3.0, dtype=torch.float64), _params(s), _params(s + 10)
    ),
    "lists_and_tuples": lambda s: {
        "layers": [_g(2, seed=s), (_g(3, seed=s + 1), _g(1, seed=s + 2))]
    },
    "none_nodes": lambda s: {"a": _g(2, seed=s), "b": None, "c": [None, _g(3, seed=s + 1)]},
    "ordered_dict": lambda s: OrderedDict(z=_g(2, seed=s), a=_g(3, seed=s + 1)),
    "many_numbered_keys": lambda s: {str(i): {"weight": _g(2, seed=s + i)} for i in range(12)},
    "single_leaf": lambda s: _g(5, seed=s),
    "empty_dict": lambda s: {},
    "empty_list": lambda s: [],
    "nested_empty": lambda s: {"a": {}, "b": [], "c": None},
}
NAMES = sorted(TREES)
TENSOR_TREES = [n for n in NAMES if T.leaves(TREES[n](0))]


def _sorted_dicts(tree: Any) -> Any:
    """The same tree with every plain dict's keys inserted in sorted order."""
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*[_sorted_dicts(v) for v in tree])
    if isinstance(tree, OrderedDict):
        return OrderedDict((k, _sorted_dicts(v)) for k, v in tree.items())
    if isinstance(tree, dict):
        return {k: _sorted_dicts(tree[k]) for k in sorted(tree)}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_sorted_dicts(v) for v in tree)
    return tree


def _flat(tree: Any) -> torch.Tensor:
    lv = T.leaves(tree)
    return torch.cat([x.reshape(-1) for x in lv]) if lv else torch.zeros(0, dtype=torch.float64)


# ---------------------------------------------------------------------------
# Flattening, over every tree
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_flatten_unflatten_round_trip(name):
    tree = TREES[name](0)
    lv, td = T.flatten(tree)
    assert lv == T.leaves(tree) and td == T.structure(tree)
    back = T.unflatten(td, lv)
    assert T.structure(back) == td
    assert all(a is b for a, b in zip(T.leaves(back), lv, strict=True))
    assert type(back) is type(tree)


@pytest.mark.parametrize("name", NAMES)
def test_leaf_order_matches_torch_pytree(name):
    # fdl orders dict entries by sorted key (like optree and JAX); torch keeps
    # insertion order. With keys inserted sorted, both give the same leaves,
    # except that torch counts None as a leaf where fdl has an empty node.
    tree = _sorted_dicts(TREES[name](0))
    theirs_all = tpytree.tree_leaves(tree)
    ours, theirs = T.leaves(tree), [x for x in theirs_all if x is not None]
    assert len(ours) == len(theirs)
    assert all(a is b for a, b in zip(ours, theirs, strict=True))
    # a tree rebuilt through torch's spec from fdl's leaves is the same tree
    fresh = iter(T.leaves(TREES[name](0)))
    spec = tpytree.tree_structure(tree)
    rebuilt = tpytree.tree_unflatten([None if x is None else next(fresh) for x in theirs_all], spec)
    assert T.structure(rebuilt) == T.structure(tree)
    assert_trees_close(rebuilt, tree, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_map_agrees_with_torch_tree_map(name):
    tree = TREES[name](0)
    ours = T.map(lambda x: 2 * x + 1, tree)
    theirs = tpytree.tree_map(lambda x: None if x is None else 2 * x + 1, tree)
    assert_trees_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_paths_name_every_leaf(name):
    tree = TREES[name](0)
    ps, lv, td = T.flatten_with_paths(tree)
    assert len(ps) == len(lv) == td.num_leaves
    assert len(set(ps)) == len(ps)
    assert T.paths(tree) == ps


def test_paths_use_field_names_keys_and_indices():
    state = TREES["namedtuple_state"](0)
    assert T.paths(state)[:3] == ["count", "mu.fc1.bias", "mu.fc1.weight"]
    assert T.paths(TREES["lists_and_tuples"](0)) == ["layers.0", "layers.1.0", "layers.1.1"]
    assert T.paths(TREES["none_nodes"](0)) == ["a", "c.1"]
    assert T.paths(TREES["ordered_dict"](0)) == ["z", "a"]  # OrderedDict keeps its order
    assert T.paths(TREES["single_leaf"](0)) == [""]
    assert T.paths({"a": 1}, sep="/") == ["a"]
    assert T.paths({"a": {"b": 1}}, sep="/") == ["a/b"]


def test_none_is_an_empty_node():
    assert T.leaves(None) == []
    assert T.leaves({"a": None}) == []
    assert T.structure({"a": None}) != T.structure({"a": 1})


# ---------------------------------------------------------------------------
# Structure comparison and its errors
# ---------------------------------------------------------------------------

MISMATCHES = [
    # (a, b, path named in the error, words in the reason)
    ({"w": 1, "b": 1}, {"w": 1}, "<root>", "missing []"),
    ({"fc": {"w": 1}}, {"fc": {"v": 1}}, "fc", "keys differ"),
    (
        AdamLikeState(1, {"fc": {"w": 1}}, {}),
        AdamLikeState(1, {"fc": {"w": 1, "b": 2}}, {}),
        "mu.fc",
        "keys differ",
    ),
    ({"layers": [1, 2]}, {"layers": [1, 2, 3]}, "layers", "length 2 vs 3"),
    ({"layers": [1, 2]}, {"layers": (1, 2)}, "layers", "list vs tuple"),
    ({"a": [1, {"b": 1}]}, {"a": [1, {"b": [1]}]}, "a.1.b", "int vs list"),
    ({"a": None}, {"a": torch.ones(2)}, "a", "NoneType vs tensor(2,)"),
]


@pytest.mark.parametrize(("a", "b", "path", "why"), MISMATCHES)
def test_first_difference_names_the_path(a, b, path, why):
    where, reason = T.first_difference(a, b)
    assert where == path
    assert why in reason


@pytest.mark.parametrize(("a", "b", "path", "why"), MISMATCHES)
def test_structure_mismatch_errors_name_the_path(a, b, path, why):
    with pytest.raises(ValueError, match=f"grads and params .* at '{path}'"):
        T.assert_same_structure(a, b, names=("grads", "params"))
    with pytest.raises(ValueError, match=f"'{path}'"):
        T.map(lambda x, y: x, a, b)
    with pytest.raises(ValueError, match=f"'{path}'"):
        T.map_with_path(lambda p, x, y: x, a, b)
    assert not T.allclose(a, b)


def test_same_structure_passes():
    T.assert_same_structure(_params(0), _params(1), _params(2))
    T.assert_same_structure(_params(0))
    assert T.first_difference(_params(0), _params(5)) is None
    # key insertion order does not matter: both sort
    a = {"a": 1, "b": 2}
    b = {"b": 2, "a": 1}
    assert T.first_difference(a, b) is None and T.leaves(a) == T.leaves(b)


def test_vdot_structure_mismatch():
    with pytest.raises(ValueError, match="a and b have different tree structures at '<root>'"):
        T.vdot({"w": torch.ones(2)}, {"v": torch.ones(2)})


# ---------------------------------------------------------------------------
# Arithmetic against the concatenated-vector formulas
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_arithmetic_matches_flat_vectors(name):
    a, b, c = TREES[name](0), TREES[name](20), TREES[name](40)
    fa, fb, fc = _flat(a), _flat(b), _flat(c)
    assert torch.equal(_flat(T.add(a, b, c)), fa + fb + fc)
    assert T.add(a) is a
    assert torch.equal(_flat(T.sub(a, b)), fa - fb)
    assert torch.equal(_flat(T.scale(a, 0.5)), 0.5 * fa)
    assert torch.equal(_flat(T.scale(a, torch.tensor(0.5, dtype=torch.float64))), 0.5 * fa)
    torch.testing.assert_close(
        T.vdot(a, b), torch.dot(fa, fb), rtol=1e-12, atol=1e-12, check_dtype=False
    )
    torch.testing.assert_close(
        T.global_norm(a), torch.linalg.vector_norm(fa), rtol=1e-12, atol=1e-12, check_dtype=False
    )
    assert T.size(a) == fa.numel()
    for like, value in ((T.zeros_like, 0.0), (T.ones_like, 1.0)):
        out = like(a)
        assert T.structure(out) == T.structure(a)
        assert all(
            x.dtype == y.dtype and x.shape == y.shape
            for x, y in zip(T.leaves(out), T.leaves(a), strict=True)
        )
        assert bool((_flat(out) == value).all())
    for out in (T.add(a, b), T.sub(a, b), T.scale(a, 2.0)):
        assert T.structure(out) == T.structure(a)


@pytest.mark.parametrize("name", NAMES)
def test_arithmetic_is_pure(name):
    a, b = TREES[name](0), TREES[name](1)
    before = [x.clone() for x in T.leaves(a)] + [x.clone() for x in T.leaves(b)]
    T.add(a, b), T.sub(a, b), T.scale(a, 3.0), T.vdot(a, b), T.global_norm(a)
    T.map(lambda x: x.mul(2), a), T.stack([a, b]) if T.leaves(a) else None
    after = T.leaves(a) + T.leaves(b)
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


def test_global_norm_gradient_matches_torch():
    p = _params(0)
    g = torch.func.grad(T.global_norm)(p)
    flat = _flat(p).requires_grad_(True)
    (ref,) = torch.autograd.grad(torch.linalg.vector_norm(flat), flat)
    torch.testing.assert_close(_flat(g), ref, rtol=1e-12, atol=1e-12)


def test_all_finite_and_allclose():
    p = _params(0)
    assert bool(T.all_finite(p)) and bool(T.all_finite({}))
    bad = T.map(lambda x: x.clone(), p)
    bad["fc2"]["bias"][0] = float("inf")
    assert not bool(T.all_finite(bad))
    bad["fc2"]["bias"][0] = float("nan")
    assert not bool(T.all_finite(bad))
    assert T.allclose(p, T.map(lambda x: x * (1 + 1e-9), p))
    assert not T.allclose(p, T.map(lambda x: x + 1e-3, p))
    assert not T.allclose({"w": torch.ones(2)}, {"w": torch.ones(3)})
    assert T.allclose({"n": 3, "w": torch.ones(1)}, {"n": 3, "w": torch.ones(1)})
    assert not T.allclose({"n": 3}, {"n": 4})


# ---------------------------------------------------------------------------
# stack / unstack
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TENSOR_TREES)
def test_stack_unstack_round_trip(name):
    trees = [TREES[name](s) for s in range(3)]
    stacked = T.stack(trees)
    assert T.structure(stacked) == T.structure(trees[0])
    for x, y in zip(T.leaves(stacked), T.leaves(trees[0]), strict=True):
        assert x.shape == (3, *y.shape)
    back = T.unstack(stacked)
    assert len(back) == 3
    for got, want in zip(back, trees, strict=True):
        assert_trees_close(got, want, rtol=0, atol=0)


def test_stack_feeds_vmap():
    ens = T.stack([_params(s) for s in range(4)])
    x = _g(5, 3)
    out = torch.func.vmap(lambda p: x @ p["fc1"]["weight"].T + p["fc1"]["bias"])(ens)
    for i, p in enumerate(T.unstack(ens)):
        torch.testing.assert_close(out[i], x @ p["fc1"]["weight"].T + p["fc1"]["bias"])


def test_stack_unstack_errors():
    with pytest.raises(ValueError, match="at least one tree"):
        T.stack([])
    with pytest.raises(ValueError, match="'<root>'"):
        T.stack([{"a": torch.ones(1)}, {"b": torch.ones(1)}])
    with pytest.raises(ValueError, match="same leading axis"):
        T.unstack({"a": torch.ones(2), "b": torch.ones(3)})
    with pytest.raises(ValueError, match="leaf 'b' is tensor\\(\\)"):
        T.unstack({"a": torch.ones(2), "b": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="leaf 'n' is int"):
        T.unstack({"a": torch.ones(2), "n": 3})
    assert T.unstack({}) == []


# ---------------------------------------------------------------------------
# Flat "a.b" dicts
# ---------------------------------------------------------------------------


def test_flat_dict_round_trip_and_torch_state_dict_keys():
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(4, 2))
    )
    sd = {k: v.detach() for k, v in module.state_dict().items()}
    nested = T.from_flat_dict(sd)
    assert set(nested) == {"0", "2"} and set(nested["2"]["0"]) == {"weight", "bias"}
    flat = T.to_flat_dict(nested)
    assert set(flat) == set(sd)
    assert all(flat[k] is sd[k] for k in sd)


def test_to_flat_dict_of_namedtuple_state():
    flat = T.to_flat_dict(TREES["namedtuple_state"](0))
    assert list(flat)[:3] == ["count", "mu.fc1.bias", "mu.fc1.weight"]
    assert T.to_flat_dict({}) == {}


def test_flat_dict_conflicts():
    with pytest.raises(ValueError, match="'a.b' conflicts with leaf 'a'"):
        T.from_flat_dict({"a": 1, "a.b": 2})
    with pytest.raises(ValueError, match="'a' conflicts"):
        T.from_flat_dict({"a.b": 2, "a": 1})
    with pytest.raises(ValueError, match="share the key 'a.b'"):
        T.to_flat_dict({"a.b": 1, "a": {"b": 2}})
    assert T.from_flat_dict({"a/b": 1}, sep="/") == {"a": {"b": 1}}


_keys = st.text(alphabet="abcxyz019_", min_size=1, max_size=4)
_nested = st.recursive(
    st.integers(0, 5).map(lambda n: torch.arange(float(n))),
    lambda children: st.dictionaries(_keys, children, min_size=1, max_size=4),
    max_leaves=12,
)
_mixed = st.recursive(
    st.integers(0, 3).map(lambda n: torch.ones(n)) | st.none(),
    lambda ch: (
        st.lists(ch, max_size=3)
        | st.lists(ch, max_size=3).map(tuple)
        | st.dictionaries(_keys, ch, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=25, deadline=None)
@given(_nested)
def test_flat_dict_round_trip_property(tree):
    if not isinstance(tree, dict):
        tree = {"root": tree}
    back = T.from_flat_dict(T.to_flat_dict(tree))
    assert T.structure(back) == T.structure(tree)
    assert all(a is b for a, b in zip(T.leaves(back), T.leaves(tree), strict=True))


@settings(max_examples=25, deadline=None)
@given(_mixed)
def test_flatten_round_trip_and_torch_order_property(tree):
    lv, td = T.flatten(tree)
    assert T.structure(T.unflatten(td, lv)) == td
    theirs = [x for x in tpytree.tree_leaves(_sorted_dicts(tree)) if x is not None]
    assert [id(x) for x in lv] == [id(x) for x in theirs]


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------


def _tree_step(state: AdamLikeState, grads: dict) -> tuple[Any, ...]:
    mu = T.add(T.scale(state.mu, 0.9), T.scale(grads, 0.1))
    nu = T.map(lambda v, g: 0.99 * v + 0.01 * g * g, state.nu, grads)
    new = AdamLikeState(state.count + 1, mu, nu)
    return new, T.global_norm(grads), T.vdot(mu, grads), T.zeros_like(grads), T.all_finite(mu)


@pytest.fixture(scope="module")
def compiled_tree_step():
    return torch.compile(_tree_step, fullgraph=True)


def test_tree_functions_trace_under_compile(compiled_tree_step):
    state, grads = TREES["namedtuple_state"](0), _params(7)
    got = compiled_tree_step(state, grads)
    want = _tree_step(state, grads)
    assert isinstance(got[0], AdamLikeState)
    assert_trees_close(got, want, rtol=1e-12, atol=1e-12)


def test_docs_examples_run():
    """Every ```python block of docs/pytrees.md runs, in order, in one namespace."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "pytrees.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    namespace: dict[str, Any] = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/pytrees.md block {i}", "exec"), namespace)
