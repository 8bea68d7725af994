"""Key derivation keeps streams apart: no derived key (a split child, a fold) equals its
parent or another derivation, so the numbers drawn from a derived key never repeat the
parent's stream. Checked over many parent keys, for every derivation in one registry."""

from __future__ import annotations

import pytest
import torch

import fdl.random as R

PARENTS = [R.key(s) for s in (0, 1, 7, 2**32 - 1, 2**32, 2**63 - 1)]

# name -> parent key -> stacked derived keys (n, 2)
DERIVATIONS = {
    "split2": lambda k: R.split(k),
    "split5": lambda k: R.split(k, 5),
    "split1": lambda k: R.split(k, 1),
    "fold_in": lambda k: torch.stack([R.fold_in(k, i) for i in (0, 1, 2, 3, 2**31, 2**40)]),
}


@pytest.mark.parametrize("name", list(DERIVATIONS))
def test_no_derived_key_equals_its_parent(name):
    for k in PARENTS:
        kids = DERIVATIONS[name](k)
        assert not bool((kids == k).all(-1).any()), f"{name}: a derived key equals its parent"
        assert len({tuple(c) for c in kids.tolist()}) == kids.shape[0]


@pytest.mark.parametrize("name", list(DERIVATIONS))
def test_derived_streams_do_not_repeat_the_parents(name):
    """The first numbers drawn from any derived key differ from the parent's."""
    for k in PARENTS:
        parent = R.uniform(k, (4,), dtype=torch.float64)
        for c in DERIVATIONS[name](k):
            assert not torch.equal(R.uniform(c, (4,), dtype=torch.float64), parent)


def test_fold_in_depends_on_every_bit_of_its_data():
    """fold_in(k, d) differs for data differing in one bit, low word or high word."""
    k = R.key(3)
    base = R.fold_in(k, 0)
    for bit in (0, 1, 17, 31, 32, 45, 62):
        assert not torch.equal(R.fold_in(k, 1 << bit), base), bit


@pytest.mark.parametrize(("dtype", "bits"), [(torch.float32, 24), (torch.float64, 53)], ids=str)
def test_normal_grid_is_symmetric_about_zero(dtype, bits):
    """normal's inverse CDF is taken on the grid v = (2m + 1 - 2**b) 2**-b: odd multiples of
    2**-b, symmetric about 0, never -1 or 1. Recover v = erf(z / sqrt 2) where it is exact
    enough to read its grid position (|v| < 2**-6: the round trip errs by well under a
    quarter of a grid step there) and check that it is an odd multiple."""
    z = R.normal(R.key(5), (200_000,), dtype=dtype).to(torch.float64)
    v = torch.erf(z / 2**0.5)
    w = v[v.abs() < 2**-6] * 2.0**bits
    assert w.numel() > 1000
    assert float((w - w.round()).abs().max()) < 0.25
    assert bool((torch.remainder(w.round(), 2) == 1).all()), "grid points are not odd multiples"
