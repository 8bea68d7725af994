"""The step breakdown by kernel class, the MLP's matmuls alone, and their place in the report."""

from __future__ import annotations

import types

import pytest
import torch

from benchmarks import __main__ as harness
from benchmarks import _breakdown as B
from benchmarks import _workloads as W
from benchmarks import train_step
from benchmarks._harness import Result

# (event name, names of the events around it, expected class)
CLASSES = [
    ("aten::addmm", (), B.MATMUL_FWD),
    ("aten::mm", ("autograd::engine::evaluate_function: AddmmBackward0",), B.MATMUL_BWD),
    ("aten::bmm", (), B.MATMUL_BWD),
    ("aten::mul_", ("Optimizer.step#Adam.step",), B.ADAM),
    ("aten::_fused_adam_", ("Optimizer.step#Adam.step",), B.ADAM),
    ("aten::_fused_adam_", (), B.ADAM),
    ("aten::_log_softmax", (), B.LOSS),
    ("aten::nll_loss_backward", (), B.LOSS),
    ("aten::scatter_reduce_", ("Torch-Compiled Region: 0/0",), B.LOSS),
    ("aten::mkldnn_convolution", (), B.CONV_FWD),
    ("aten::conv2d", (), B.CONV_FWD),
    ("aten::convolution_backward", (), B.CONV_BWD),
    ("aten::max_pool2d_with_indices", (), B.POOLING),
    ("aten::max_pool2d_with_indices_backward", (), B.POOLING),
    ("graph_0_cpp_fused_max_pool2d_with_indices_relu_2", (), B.POOLING),
    ("cpp_fused__low_memory_max_pool2d_offsets_to_indices_4", (), B.POOLING),
    ("aten::relu", (), B.ELEMENTWISE),
    ("aten::threshold_backward", (), B.ELEMENTWISE),
    ("aten::sum", (), B.ELEMENTWISE),
    ("graph_0_cpp_fused__to_copy_add_addcmul_div_lerp_mul_sqrt_stack_sum_unbind_7", (), B.ADAM),
    ("graph_0_cpp_fused__to_copy_abs_amax_div_eq_exp_expand_gather_log_3", (), B.LOSS),
    ("graph_0_cpp_fused_relu_1", (), B.ELEMENTWISE),
    ("cpp_fused_threshold_backward_5", (), B.ELEMENTWISE),
    ("aten::empty", (), None),
    ("aten::t", ("Optimizer.step#Adam.step",), None),
    ("aten::as_strided", (), None),
    ("Optimizer.step#Adam.step", (), None),
    ("Torch-Compiled Region: 0/0", (), None),
    ("autograd::engine::evaluate_function: AddmmBackward0", (), None),
    ("TorchDynamo Cache Lookup", (), None),
]


@pytest.mark.parametrize(("name", "ancestors", "expected"), CLASSES)
def test_each_event_lands_in_its_class(name: str, ancestors: tuple, expected: str | None) -> None:
    assert B.kernel_class(name, ancestors) == expected


@pytest.mark.parametrize(
    ("shapes", "expected"), [([[64, 64, 576]], B.POOLING), ([[64, 10]], B.LOSS), ([], B.LOSS)]
)
def test_a_scatter_into_an_image_is_pooling(shapes: list, expected: str) -> None:
    assert B.kernel_class("aten::scatter_add_", (), shapes) == expected


def _eager_step() -> object:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 3 * 3, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 4),
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))

    def call() -> None:
        opt.zero_grad()
        torch.nn.functional.nll_loss(torch.log_softmax(net(x), dim=1), y).backward()
        opt.step()

    return call


def test_profiled_eager_step_has_every_class_and_adds_up() -> None:
    call = _eager_step()
    call()
    b = B.profile_breakdown(call, steps=3)
    assert set(b) == {*B.KERNEL_CLASSES, B.FRAMEWORK}
    for cls in B.KERNEL_CLASSES:
        assert b[cls] > 0, cls
    assert b[B.FRAMEWORK] > 0  # Python, autograd's engine and the profiler itself


def test_kernel_profiling_is_on_only_inside_the_block() -> None:
    before = torch._inductor.config.cpp.enable_kernel_profile
    with B.kernel_profiling():
        assert torch._inductor.config.cpp.enable_kernel_profile is True
    assert torch._inductor.config.cpp.enable_kernel_profile == before


def _result(workload: str, peer: str, ms: float, **extra: object) -> Result:
    return Result(workload, peer, ms / 1e3, ms / 1e3, ms / 1e3, 1, extra=dict(extra))


def test_report_has_the_breakdown_table_and_the_jax_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = types.SimpleNamespace(describe=lambda: "a machine", peak_gflops_fp32=100.0)
    monkeypatch.setattr(harness, "machine", lambda: machine)
    monkeypatch.setattr(harness, "versions", lambda: {"torch": torch.__version__})
    rows = [
        _result(W.MLP, "fdl", 2.0, breakdown={B.MATMUL_FWD: 0.5, B.ADAM: 0.25, B.FRAMEWORK: 1.0}),
        _result(W.MLP, W.JAX_PEER, 1.5, pieces_ms={"forward": 0.4, "Adam update": 0.2}),
        _result(W.MLP, "torch eager", 3.0),
    ]
    entry = {"name": "x", "results": rows, "flops": {}, "error": None, "seconds": 1.0}
    text = harness.render([entry], quick=True, argv=[], plot=None)
    # only the classes some row has time in
    assert "| peer | matmul fwd | Adam | framework | profiled wall |" in text
    assert "| fdl | 0.50 | 0.25 | 1.00 | 1.75 |" in text
    assert f"{W.JAX_PEER}, jitted pieces timed alone (ms): forward 0.40, Adam update 0.20." in text
    table = text.split("Where the time goes")[1].split(W.JAX_PEER)[0]
    assert "| fdl |" in table and "| torch eager |" not in table  # it was not profiled
    assert B.markdown([rows[2]]) == ""


def test_mlp_targets_name_torch_eager_and_the_jax_peer() -> None:
    fdl_row = _result(W.MLP, "fdl", 2.0, targets=train_step._TARGETS[W.MLP])
    rows = [fdl_row, _result(W.MLP, "torch eager", 3.5), _result(W.MLP, W.JAX_PEER, 1.6)]
    got = harness._targets_rows(rows)
    assert len(got) == 2
    assert "≥ 1.5× faster than torch eager" in got[0] and got[0].endswith("| met |")
    assert "no slower than JAX" in got[1] and got[1].endswith("| **missed** |")


@pytest.mark.parametrize("kind", ["aten", "onednn"])
def test_mlp_matmuls_alone_compute_the_steps_products(kind: str) -> None:
    calls = train_step._gemm_calls(kind)
    ref = train_step._gemm_calls("aten")
    assert list(calls) == ["fwd1", "wgrad1", "fwd2", "wgrad2", "xgrad2", "fwd3", "wgrad3", "xgrad3"]
    sizes = W.MLP_SIZES
    for i in range(1, len(sizes)):
        assert calls[f"fwd{i}"]().shape == (W.MLP_BATCH, sizes[i])
        assert calls[f"wgrad{i}"]().shape == (sizes[i], sizes[i - 1])
        if i > 1:
            assert calls[f"xgrad{i}"]().shape == (W.MLP_BATCH, sizes[i - 1])
    for k, f in calls.items():  # fp32 sums of up to 784 products of N(0, 1) values
        torch.testing.assert_close(f(), ref[k](), rtol=1e-4, atol=1e-3)


def test_mlp_matmuls_on_one_thread_restore_the_thread_count() -> None:
    before = torch.get_num_threads()
    seen = []
    train_step._on_threads(lambda: seen.append(torch.get_num_threads()), 1)()
    assert seen == [1] and torch.get_num_threads() == before
