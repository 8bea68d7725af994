"""The eager 2x2 max-pool path (channels-last forward, backward in the input's layout).

``fdl.nn.functional.max_pool2d(x, 2)`` on a ``(N, C, H, W)`` input with
``C > 1`` takes its own path (see ``_MaxPool2x2``); every derivative that fdl
supports must still be torch's, bit for bit: values, reverse mode, forward
mode, second order, under ``vmap`` and ``grad``, with ties and NaN, and in the
input's memory layout. Compiled code keeps the compiler's pooling (checked
once under inductor, ties and NaN included).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fdl.nn import functional as FF
from fdl.nn._maxpool import _MaxPool2x2

SHAPES = [(2, 3, 8, 8), (3, 5, 7, 9), (1, 2, 2, 2), (4, 16, 28, 28)]


def _ties() -> torch.Tensor:
    x = torch.tensor(
        [[1.0, 1.0, 0.0, 2.0], [1.0, 0.0, float("nan"), 2.0], [0.0] * 4, [-0.0, 0.0, -1.0, -1.0]]
    )
    return x.expand(2, 3, 4, 4).contiguous()


def test_the_fast_path_is_taken() -> None:
    assert _MaxPool2x2.applies(torch.zeros(2, 3, 4, 4))
    assert not _MaxPool2x2.applies(torch.zeros(2, 1, 4, 4))  # one channel: nothing to gain


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_gradients_equal_torch(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=dtype)
    y = FF.max_pool2d(x, 2)
    assert torch.equal(y, F.max_pool2d(x, 2)) and y.is_contiguous()
    w = torch.randn(y.shape, generator=g, dtype=dtype)
    g1 = torch.func.grad(lambda t: (FF.max_pool2d(t, 2) * w).sum())(x)
    g2 = torch.func.grad(lambda t: (F.max_pool2d(t, 2) * w).sum())(x)
    assert torch.equal(g1, g2)


def test_ties_and_nan_follow_torch() -> None:
    x = _ties()
    y1, y2 = FF.max_pool2d(x, 2), F.max_pool2d(x, 2)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0, equal_nan=True)
    g1 = torch.func.grad(lambda t: FF.max_pool2d(t, 2).nan_to_num().sum())(x)
    g2 = torch.func.grad(lambda t: F.max_pool2d(t, 2).nan_to_num().sum())(x)
    assert torch.equal(g1, g2)


def test_vmap_grad_jvp_hessian_equal_torch() -> None:
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(5, 2, 3, 6, 6, generator=g, dtype=torch.float64)
    for fdl_fn, torch_fn in [
        (lambda t: FF.max_pool2d(t, 2), lambda t: F.max_pool2d(t, 2)),
        (
            torch.func.grad(lambda t: FF.max_pool2d(t, 2).pow(2).sum()),
            torch.func.grad(lambda t: F.max_pool2d(t, 2).pow(2).sum()),
        ),
    ]:
        assert torch.equal(torch.vmap(fdl_fn)(xs), torch.vmap(torch_fn)(xs))
    x, v = xs[0], torch.randn(xs[0].shape, generator=g, dtype=torch.float64)
    j1 = torch.func.jvp(lambda t: FF.max_pool2d(t, 2), (x,), (v,))[1]
    assert torch.equal(j1, torch.func.jvp(lambda t: F.max_pool2d(t, 2), (x,), (v,))[1])
    h1 = torch.func.hessian(lambda t: FF.max_pool2d(t, 2).pow(3).sum())(x[:1])
    assert torch.equal(h1, torch.func.hessian(lambda t: F.max_pool2d(t, 2).pow(3).sum())(x[:1]))
    xr = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: FF.max_pool2d(t, 2), (xr,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(lambda t: FF.max_pool2d(t, 2), (xr,))


def test_channels_last_and_strided_inputs() -> None:
    g = torch.Generator().manual_seed(2)
    base = torch.randn(4, 6, 10, 12, generator=g)
    channels_last = base.contiguous(memory_format=torch.channels_last)
    for x in (channels_last, base.transpose(2, 3)):
        assert _MaxPool2x2.applies(x)
        assert torch.equal(FF.max_pool2d(x, 2), F.max_pool2d(x, 2))
        g1 = torch.func.grad(lambda t: FF.max_pool2d(t, 2).pow(2).sum())(x)
        assert torch.equal(g1, torch.func.grad(lambda t: F.max_pool2d(t, 2).pow(2).sum())(x))
    # channels-last in, channels-last out, forward and backward (as torch's own kernel)
    y = FF.max_pool2d(channels_last, 2)
    assert y.stride() == F.max_pool2d(channels_last, 2).stride() and y.stride()[1] == 1
    g = torch.func.grad(lambda t: FF.max_pool2d(t, 2).pow(2).sum())(channels_last)
    assert g.stride() == channels_last.stride()


def test_compiled_max_pool_equals_torch_with_ties_and_nan() -> None:
    torch._dynamo.reset()
    x = _ties().to(memory_format=torch.channels_last) + torch.arange(4.0).reshape(1, 1, 1, 4)

    def grad(pool):  # noqa: ANN001, ANN202
        return torch.func.grad_and_value(lambda t: pool(t, 2).nan_to_num().pow(2).sum())

    got = torch.compile(grad(FF.max_pool2d), fullgraph=True)(x)
    want = grad(F.max_pool2d)(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
