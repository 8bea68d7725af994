"""assert_trees_close's tolerance is relative to the expected value: at every magnitude, an
error of half the rtol (times |expected|) passes and twice the rtol fails, for each floating
dtype's default rtol (with atol 0 so only the relative part decides)."""

from __future__ import annotations

import pytest
import torch

from fdl.testing import assert_trees_close, default_tolerances

MAGNITUDES = [1e-6, 1e-3, 1.0, 1e3, 1e6]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("scale", MAGNITUDES)
def test_rtol_scales_with_the_expected_magnitude(dtype, scale):
    rtol, _ = default_tolerances(dtype)
    e = torch.tensor([scale, -scale], dtype=torch.float64)
    inside = (e * (1 + rtol / 2)).to(dtype)
    outside = (e * (1 + 2 * rtol)).to(dtype)
    expected = e.to(dtype)
    assert_trees_close(inside, expected, atol=0.0)
    with pytest.raises(AssertionError):
        assert_trees_close(outside, expected, atol=0.0)
