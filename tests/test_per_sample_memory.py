"""Memory of the rules path: what the eager DP-SGD gradient holds, and its bound.

The bound is relative, from the allocator's own accounting (``torch.profiler``
with ``profile_memory=True``: every CPU allocation and free of the step, summed
in time order; the peak of the running sum is the step's peak of live tensor
bytes, deterministic for a given sequence of kernels). The clipped, noised
gradient of the rules path needs the layers' inputs and output gradients and
the backward of the model to the layer outputs, not to the parameters: it must
hold less than ``torch.func.grad`` of the same loss, the plain batch gradient
(measured at 0.73 of it for the document's CNN at batch 64; 1.13 when every
layer output was kept alive until the backward, each output gradient was
copied for the batch-mean scale and conv2's patches were built for the norm's
shape test). The bound, 0.9, sits between the two.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import fdl
from benchmarks.per_sample import _fdl_model
from fdl._per_sample import rules as _rules

B = 64


def _cnn() -> tuple[Any, Any, tuple[torch.Tensor, torch.Tensor]]:
    """The document's MNIST CNN (the DP-SGD benchmark's model) and a batch of ``B`` images."""
    net = _fdl_model()
    params = net.init(fdl.random.key(0))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(B, 1, 28, 28, generator=g), torch.randint(0, 10, (B,), generator=g)
    return params, lambda p, x, y: fdl.losses.nll_loss(net.apply(p, x), y), (x, y)


def _peak_bytes(fn: Any) -> int:
    """The peak of live CPU tensor bytes allocated while ``fn()`` runs (after a warm-up call)."""
    fn()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if type(e.extra_fields).__name__ == "_ExtraFields_Allocation":
            events.append((e.start_time_ns, e.extra_fields.alloc_size))  # frees are negative
    events.sort()
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak


def test_dp_grads_hold_less_than_the_batch_gradient():
    torch.set_num_threads(1)
    params, loss_fn, batch = _cnn()
    dp = fdl.privacy.dp_grads(
        loss_fn, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=B
    )
    key = fdl.random.key(1)
    got = _peak_bytes(lambda: dp(params, key, *batch))
    plain = _peak_bytes(lambda: torch.func.grad(loss_fn)(params, *batch))
    assert got < 0.9 * plain, (got, plain)


def test_eager_records_keep_no_layer_output():
    # the backward reaches each output by its autograd edge; the tensor itself is freed
    params, loss_fn, batch = _cnn()
    flat = [p.detach().requires_grad_() for p in fdl.tree.leaves(params)]
    rec = _rules.Recorder(flat)
    with torch.enable_grad(), rec:
        loss_fn(fdl.tree.unflatten(fdl.tree.structure(params), flat), *batch)
    assert len(rec.records) == 4  # conv1, conv2, fc1, fc2
    for r in rec.records:
        assert r.out.device.type == "meta" and r.edge is not None


@pytest.mark.parametrize("elems", [1, 50000, 1 << 20])
def test_chunked_conv_per_example_grads_equal_vmap(monkeypatch, elems):
    # 1: one example per chunk; 50000: uneven chunks (conv2's 18432-element weight, 10 rows)
    monkeypatch.setattr(_rules, "CONV_CHUNK_ELEMS", elems)
    params, loss_fn, batch = _cnn()
    x, y = batch[0][:10], batch[1][:10]
    got = fdl.per_sample_grads(loss_fn, method="rules")(params, x, y)
    want = fdl.per_sample_grads(loss_fn, method="vmap")(params, x, y)
    leaves = zip(fdl.tree.paths(got), fdl.tree.leaves(got), fdl.tree.leaves(want), strict=True)
    for path, a, b in leaves:
        # float32: sums of at most ~3000 products of O(1) values, reordered
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()), msg=path)


def test_conv_norm_takes_no_patches_when_the_gram_form_is_not_used(monkeypatch):
    # the shape test of the Gram form reads shapes only: im2col would copy the input k² times
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("im2col called")

    monkeypatch.setattr(_rules, "_im2col", refuse)
    params, loss_fn, batch = _cnn()
    norms = fdl.per_sample_grad_norms(loss_fn, method="rules")(params, *batch)
    assert norms.shape == (B,)
