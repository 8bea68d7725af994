"""Layer options where a rule depends on a second argument: padding limits and 'same' padding
depend on the dilation, ConvTranspose2d's valid output sizes depend on it too, and an
activation's derivative at its kink follows torch's convention. Each property is checked
against torch over a small exhaustive grid."""

from __future__ import annotations

import itertools

import pytest
import torch

import fdl
from fdl.testing import assert_trees_close

F64 = dict(rtol=1e-10, atol=1e-12)


def _torch_accepts(fn) -> bool:
    try:
        fn()
    except (RuntimeError, ValueError):
        return False
    return True


# (fdl layer, torch layer, spatial rank)
POOLS = [(fdl.nn.MaxPool1d, torch.nn.MaxPool1d, 1), (fdl.nn.MaxPool2d, torch.nn.MaxPool2d, 2)]


@pytest.mark.parametrize(("fdl_cls", "torch_cls", "n"), POOLS)
def test_max_pool_accepts_exactly_the_paddings_torch_accepts(fdl_cls, torch_cls, n):
    """Max pooling's padding limit is half the *dilated* kernel: fdl accepts a
    (kernel, dilation, padding) iff torch does, and then gives torch's result."""
    for k, d, p in itertools.product((1, 2, 3), (1, 2, 3), (0, 1, 2, 3)):
        size = (k - 1) * d + 1 + 2
        x = torch.randn(2, 3, *(size,) * n, dtype=torch.float64)
        ref = torch_cls(k, stride=1, padding=p, dilation=d)
        ok = _torch_accepts(lambda ref=ref, x=x: ref(x))
        try:
            layer = fdl_cls(k, stride=1, padding=p, dilation=d)
            y = layer.apply(layer.init(fdl.random.key(0)), x)
        except (ValueError, RuntimeError):  # fdl's own check, or torch's kernel
            assert not ok, f"fdl rejects kernel={k} dilation={d} padding={p}; torch accepts it"
            continue
        assert ok, f"fdl accepts kernel={k} dilation={d} padding={p}; torch rejects it"
        assert_trees_close(y, ref(x), **F64)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    ("fdl_cls", "torch_cls", "n"),
    [
        (fdl.nn.Conv1d, torch.nn.Conv1d, 1),
        (fdl.nn.Conv2d, torch.nn.Conv2d, 2),
    ],
)
def test_same_padding_with_padding_modes_follows_the_dilation(fdl_cls, torch_cls, n, mode):
    """padding='same' keeps the spatial size for every dilation and padding mode, with
    torch's values: the padding total is dilation * (kernel - 1), split left-first."""
    for k, d in itertools.product((2, 3), (1, 2, 3)):
        ref = torch_cls(2, 3, k, padding="same", dilation=d, padding_mode=mode, dtype=torch.float64)
        layer = fdl_cls(2, 3, k, padding="same", dilation=d, padding_mode=mode, dtype=torch.float64)
        params = fdl.nn.load_state_dict(ref.state_dict(), layer)
        x = torch.randn(2, 2, *(9,) * n, dtype=torch.float64)
        y = layer.apply(params, x)
        assert y.shape[2:] == x.shape[2:]
        assert_trees_close(y, ref(x), **F64)


def test_conv_transpose_output_size_range_follows_the_dilation():
    """Every output_size torch accepts is accepted, with torch's values; every size just
    outside torch's range is rejected — for dilations 1 to 3."""
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    for d, s in itertools.product((1, 2, 3), (1, 2, 3)):
        ref = torch.nn.ConvTranspose2d(
            2, 3, 3, stride=s, padding=1, dilation=d, dtype=torch.float64
        )
        layer = fdl.nn.ConvTranspose2d(
            2, 3, 3, stride=s, padding=1, dilation=d, dtype=torch.float64
        )
        params = fdl.nn.load_state_dict(ref.state_dict(), layer)
        smallest = (4 - 1) * s - 2 + d * 2 + 1
        for h in range(smallest - 1, smallest + s + 1):
            size = (h, smallest)
            if _torch_accepts(lambda ref=ref, size=size: ref(x, output_size=size)):
                assert_trees_close(
                    layer.apply(params, x, output_size=size), ref(x, output_size=size), **F64
                )
            else:
                with pytest.raises(ValueError):
                    layer.apply(params, x, output_size=size)


# (fdl function, torch function, kwargs): derivative at the kink x = 0
KINKS = [
    (fdl.nn.functional.leaky_relu, torch.nn.functional.leaky_relu, {"negative_slope": 0.2}),
    (fdl.nn.functional.relu, torch.nn.functional.relu, {}),
    (fdl.nn.functional.elu, torch.nn.functional.elu, {"alpha": 0.7}),
]


@pytest.mark.parametrize(("fn", "ref", "kw"), KINKS, ids=lambda v: getattr(v, "__name__", ""))
def test_derivative_at_the_kink_follows_torch(fn, ref, kw):
    """At x = 0 (and -0.0) a piecewise activation's derivative is torch's one-sided choice."""
    for v in (0.0, -0.0):
        a = torch.tensor([v], dtype=torch.float64, requires_grad=True)
        b = torch.tensor([v], dtype=torch.float64, requires_grad=True)
        (ga,) = torch.autograd.grad(fn(a, **kw).sum(), a)
        (gb,) = torch.autograd.grad(ref(b, **kw).sum(), b)
        assert_trees_close(ga, gb, **F64)
