"""One layer from each catalogue module traces under torch.compile(fullgraph=True) (eager
backend: dynamo's trace, no code generation), value and input gradient equal to eager."""

from __future__ import annotations

import pytest
import torch

import fdl
from fdl.testing import assert_trees_close

LAYERS = [
    ("Hardswish", fdl.nn.Hardswish(), (2, 3, 4), {}),
    ("PReLU", fdl.nn.PReLU(3), (2, 3, 4), {}),
    ("RReLU-train", fdl.nn.RReLU(), (2, 3, 4), {"train": True, "key": fdl.random.key(0)}),
    ("Softplus", fdl.nn.Softplus(beta=2.0), (2, 3, 4), {}),
    ("GLU", fdl.nn.GLU(), (2, 3, 4), {}),
    ("ReflectionPad2d", fdl.nn.ReflectionPad2d((1, 2, 0, 1)), (2, 3, 4, 5), {}),
    ("PixelShuffle", fdl.nn.PixelShuffle(2), (2, 8, 3, 3), {}),
    ("Dropout2d-train", fdl.nn.Dropout2d(), (2, 3, 4, 4),
     {"train": True, "key": fdl.random.key(0)}),
    ("RMSNorm", fdl.nn.RMSNorm(4), (2, 3, 4), {}),
    ("LocalResponseNorm", fdl.nn.LocalResponseNorm(3), (2, 5, 4), {}),
    ("LPPool2d", fdl.nn.LPPool2d(2, 2), (2, 3, 4, 4), {}),
    ("Conv3d", fdl.nn.Conv3d(3, 2, 2), (1, 3, 3, 3, 3), {}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "layer", "shape", "kwargs"), LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_traces_under_compile_fullgraph(name, layer, shape, kwargs):
    torch._dynamo.reset()
    params = layer.init(fdl.random.key(1))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) + 0.5

    def value_and_grad(p, x):
        return torch.func.grad_and_value(lambda xx: layer.apply(p, xx, **kwargs).sum())(x)

    compiled = torch.compile(value_and_grad, backend="eager", fullgraph=True)
    assert_trees_close(compiled(params, x), value_and_grad(params, x), rtol=1e-5, atol=1e-5)


def test_instance_norm_state_traces_under_compile():
    torch._dynamo.reset()
    norm = fdl.nn.InstanceNorm1d(3, affine=True, track_running_stats=True)
    params, state = norm.init(), norm.init_state()
    x = torch.randn(2, 3, 5)

    def step(p, s, x):
        return norm.apply(p, x, state=s, train=True)

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    assert_trees_close(compiled(params, state, x), step(params, state, x), rtol=1e-6, atol=1e-6)
