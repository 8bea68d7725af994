"""One time step of the recurrent cells, written out from their gate equations.

Each step takes the input projection ``gi = x W_ih^T + b_ih`` already computed
(for a whole sequence it is one matmul over every time step) and the previous
state, and returns the next state. Gate order inside ``W_ih``/``W_hh`` is
torch's: LSTM ``(i, f, g, o)``, GRU ``(r, z, n)``.
"""

from __future__ import annotations

import torch

from fdl.nn import _functional_activations as _A
from fdl.nn import _functional_layers as _L

Tensor = torch.Tensor


def rnn_step(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, nonlinearity: str) -> Tensor:
    """Elman step: ``h' = act(gi + h W_hh^T + b_hh)``, ``act`` = ``tanh`` or ``relu``."""
    pre = gi + _L.linear(h, w_hh, b_hh)
    return _A.tanh(pre) if nonlinearity == "tanh" else _A.relu(pre)


def lstm_step(
    gi: Tensor,
    h: Tensor,
    c: Tensor,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """LSTM step.

    ``i, f, g, o = chunk(gi + h W_hh^T + b_hh, 4)``;
    ``c' = sigmoid(f) * c + sigmoid(i) * tanh(g)``; ``h' = sigmoid(o) * tanh(c')``;
    with a projection ``h' = h' W_hr^T``.
    """
    gates = gi + _L.linear(h, w_hh, b_hh)  # (N, 4 H)
    i, f, g, o = gates.chunk(4, dim=-1)  # 4 x (N, H)
    c_new = _A.sigmoid(f) * c + _A.sigmoid(i) * _A.tanh(g)
    h_new = _A.sigmoid(o) * _A.tanh(c_new)
    if w_hr is not None:
        h_new = _L.linear(h_new, w_hr)  # (N, P)
    return h_new, c_new


def gru_gates(
    gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """GRU gates ``(r, z, n, gh_n)`` of one step (see :func:`gru_step`)."""
    gh = _L.linear(h, w_hh, b_hh)  # (N, 3 H)
    gi_r, gi_z, gi_n = gi.chunk(3, dim=-1)
    gh_r, gh_z, gh_n = gh.chunk(3, dim=-1)
    r = _A.sigmoid(gi_r + gh_r)
    z = _A.sigmoid(gi_z + gh_z)
    n = _A.tanh(gi_n + r * gh_n)
    return r, z, n, gh_n


def gru_step(gi: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """GRU step.

    ``gi = (gi_r, gi_z, gi_n)``, ``gh = h W_hh^T + b_hh = (gh_r, gh_z, gh_n)``;
    ``r = sigmoid(gi_r + gh_r)``, ``z = sigmoid(gi_z + gh_z)``,
    ``n = tanh(gi_n + r * gh_n)``, ``h' = (1 - z) * n + z * h``.
    """
    _, z, n, _ = gru_gates(gi, h, w_hh, b_hh)
    return (1 - z) * n + z * h
