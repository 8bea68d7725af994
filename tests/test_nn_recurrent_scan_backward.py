"""The hand-written backpropagation through time of ``fdl::recurrent_scan_backward``.

Reference: the autograd recomputation of the same loop (``_scan_backward_autograd``, itself
checked against torch's ``nn.LSTM`` gradients by ``tests/test_nn_recurrent.py``). Every case
is one registry line; each is checked in float64 (error model: a few dozen roundings per
step over at most 7 steps, 1e-12) and float32 (1e-5).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from fdl.nn import _recurrent_scan as S

H = 4  # hidden size
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}  # gate blocks of H rows
# mode -> its hand-written backward (looked up at call time, so a spy can replace it)
WRITTEN = {"LSTM": "_lstm_backward", "GRU": "_gru_backward", "RNN_TANH": "_rnn_backward"}
WRITTEN["RNN_RELU"] = "_rnn_backward"

# (mode, reverse, batch, length, with b_hh, zero final-state cotangents)
CASES = list(
    itertools.product(list(GATES), [False, True], [1, 3], [1, 7], [True, False], [False, True])
)
TOLS = {torch.float64: 1e-12, torch.float32: 1e-5}


def _id(case: Any) -> str:
    mode, rev, n, length, bias, zero = case
    direction, b, g = "rev" if rev else "fwd", "b" if bias else "nob", "g0" if zero else "g"
    return f"{mode}-{direction}-N{n}-L{length}-{b}-{g}"


def _args(case: Any, dtype: torch.dtype, saved: bool = True) -> tuple:
    """Schema arguments of ``recurrent_scan_backward`` (no projection).

    The last three, the forward's saved ``(out, acts, cells)``, come from the forward
    operator (``saved``) or are empty (the backward then recomputes the forward).
    """
    mode, rev, n, length, bias, zero = case
    gen = torch.Generator().manual_seed(CASES.index(case))

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    lstm, g = mode == "LSTM", GATES[mode] * H
    gi, h0, w_hh = r(length, n, g), r(n, H), r(g, H) * 0.5
    c0 = r(n, H) if lstm else torch.empty(0, dtype=dtype)
    b_hh = r(g) if bias else None
    g_out = r(length, n, H)
    g_h = torch.zeros(n, H, dtype=dtype) if zero else r(n, H)
    g_c = (torch.zeros(n, H, dtype=dtype) if zero else r(n, H)) if lstm else torch.zeros(0)
    forward = (gi, h0, c0, w_hh, b_hh, None, mode, rev)
    out, _, _, acts, cells = S.recurrent_scan(*forward)
    if not saved:
        acts, cells = torch.empty(0, dtype=dtype), torch.empty(0, dtype=dtype)
    return (*forward, g_out, g_h, g_c.to(dtype), out, acts, cells)


def _check(got: list[torch.Tensor], expected: list[torch.Tensor], tol: float) -> None:
    names = ("gi", "h0", "c0", "w_hh", "b_hh", "w_hr")
    assert len(got) == len(expected) == len(names)
    for name, a, b in zip(names, got, expected, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=f"d {name}")


@pytest.mark.parametrize("dtype", list(TOLS), ids=str)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_backward_equals_autograd_recompute(case: Any, dtype: torch.dtype) -> None:
    """Every gradient (and every empty placeholder) equals the autograd recomputation's."""
    args = _args(case, dtype)
    written = getattr(S, WRITTEN[case[0]])
    _check(written(*args), S._scan_backward_autograd(*args), TOLS[dtype])


@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "LSTM"], ids=_id)
def test_lstm_backward_without_saved_gates_recomputes_them(case: Any) -> None:
    """Given empty ``acts``/``cells``, the LSTM backward recomputes the forward: same result."""
    args = _args(case, torch.float64, saved=False)
    _check(S._lstm_backward(*args), S._scan_backward_autograd(*args), TOLS[torch.float64])


@pytest.mark.parametrize("case", CASES[::5], ids=_id)
def test_operator_takes_the_hand_written_path(case: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registered operator dispatches each mode without projection to its own backward."""
    args = _args(case, torch.float64)
    calls: list[int] = []
    original = getattr(S, WRITTEN[case[0]])

    def spy(*a: Any) -> list[torch.Tensor]:
        calls.append(1)
        return original(*a)

    monkeypatch.setattr(S, WRITTEN[case[0]], spy)
    _check(list(S.recurrent_scan_backward(*args)), S._scan_backward_autograd(*args), 1e-12)
    assert calls == [1]


def test_projection_keeps_the_autograd_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``w_hr`` (proj_size > 0) the operator uses the autograd recomputation."""
    gi, h0, c0, w_hh, b_hh, _, mode, rev, g_out, _, g_c, *_ = _args(CASES[2], torch.float64)
    w_hr = torch.randn(2, H, dtype=torch.float64)
    h0, g_out, g_h = h0[:, :2], g_out[..., :2], torch.ones_like(h0[:, :2])
    w_hh = w_hh[:, :2]
    out, _, _, acts, cells = S.recurrent_scan(gi, h0, c0, w_hh, b_hh, w_hr, mode, rev)
    assert acts.numel() == cells.numel() == 0  # nothing saved: the backward recomputes
    monkeypatch.setattr(S, "_lstm_backward", None)  # calling it would raise
    args = (gi, h0, c0, w_hh, b_hh, w_hr, mode, rev, g_out, g_h, g_c, out, acts, cells)
    _check(list(S.recurrent_scan_backward(*args)), S._scan_backward_autograd(*args), 1e-12)
