"""tree.allclose compares structure as well as leaves: two trees with the same leaves in a
different structure (renamed keys, list for tuple, another nesting, None for a leaf) are
never close, and a tree is always close to itself. One registry of structure changes."""

from __future__ import annotations

import pytest
import torch

import fdl

T = torch.ones(2, dtype=torch.float64)
BASE = {"a": T, "b": [T, (T, T)]}

# name -> a tree with BASE's leaves (same values, same count) in another structure
RESTRUCTURED = {
    "renamed_key": {"a": T, "c": [T, (T, T)]},
    "list_for_tuple": {"a": T, "b": [T, [T, T]]},
    "tuple_for_list": {"a": T, "b": (T, (T, T))},
    "nested_differently": {"a": T, "b": [(T, T), T]},
    "flattened_one_level": {"a": T, "b": [T, T, T]},
}


@pytest.mark.parametrize("name", list(RESTRUCTURED))
def test_same_leaves_in_another_structure_are_not_close(name):
    other = RESTRUCTURED[name]
    assert len(fdl.tree.leaves(other)) == len(fdl.tree.leaves(BASE))
    assert fdl.tree.allclose(BASE, other) is False
    assert fdl.tree.allclose(other, BASE) is False


@pytest.mark.parametrize("name", list(RESTRUCTURED))
def test_every_tree_is_close_to_a_copy_of_itself(name):
    tree = RESTRUCTURED[name]
    assert fdl.tree.allclose(tree, fdl.tree.map(torch.clone, tree)) is True
