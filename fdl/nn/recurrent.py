r"""Recurrent layers: ``RNNCell``, ``LSTMCell``, ``GRUCell``, ``RNN``, ``LSTM``, ``GRU``.

Constructors, defaults, parameter names (``weight_ih_l0``,
``weight_hh_l0_reverse``, ``bias_ih_l1``, ``weight_hr_l0``, ...), tensor layouts
and return values are torch's, so ``fdl.nn.load_state_dict(m.state_dict(), layer)``
loads a ``torch.nn.LSTM`` as it is. The gate equations are written out in
:mod:`fdl.nn._functional_recurrent` (torch's fused kernels are never called):

* RNN: :math:`h_t = \tanh(x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh})`
  (``relu`` with ``nonlinearity='relu'``).
* LSTM: :math:`(i, f, g, o) = (x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh})`
  split in four; :math:`c_t = \sigma(f) c_{t-1} + \sigma(i) \tanh(g)`,
  :math:`h_t = \sigma(o) \tanh(c_t)`, then :math:`h_t W_{hr}^\top` with ``proj_size > 0``.
* GRU: :math:`r = \sigma(\cdot_r)`, :math:`z = \sigma(\cdot_z)`,
  :math:`n = \tanh(x_t W_{in}^\top + b_{in} + r (h_{t-1} W_{hn}^\top + b_{hn}))`,
  :math:`h_t = (1 - z) n + z h_{t-1}`.

The input projection ``x W_ih^T + b_ih`` is one matmul over the whole sequence;
the recurrence is a Python loop over time steps, which ``torch.compile`` unrolls
(see ``docs/sequence.md`` for what that costs in compile time).

Dropout between stacked layers (``dropout > 0``) needs ``key=`` and
``train=True``; layer ``l``'s mask comes from ``fdl.random.split(key,
num_layers)[l]``. torch draws it from the global RNG, so the masks differ from
torch's; with ``train=False`` (the default) there is no dropout, as in
``module.eval()``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch

from fdl import random as _random
from fdl._per_sample import marks as _per_sample_marks
from fdl.nn import _functional_layers as _L
from fdl.nn import _functional_recurrent as _R
from fdl.nn import _recurrent_scan
from fdl.nn import init as _init
from fdl.nn._base import Layer, Params
from fdl.nn._layer_utils import check_params_fast, split_key

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell"]

Tensor = torch.Tensor
_LSTMState = tuple[Tensor, Tensor]  # (h, c)
_HX = TypeVar("_HX")  # the hidden state a layer's apply takes
_Out = TypeVar("_Out")  # what its apply returns
_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
# When the time loop runs as the opaque ``fdl::recurrent_scan`` operator: "compile" (only
# while torch.compile traces, so compile time does not grow with the length), "always"
# or "never" (the Python loop, unrolled by torch.compile). Private; tests switch it.
_SCAN_OP = "compile"


def _use_scan_op() -> bool:
    return _SCAN_OP == "always" or (_SCAN_OP == "compile" and torch.compiler.is_compiling())


def _uniform_params(
    key: _random.Key, shapes: dict[str, tuple[int, ...]], hidden_size: int, device: Any, dtype: Any
) -> Params:
    """Every parameter from ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``, as torch."""
    bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
    keys = split_key(key, max(len(shapes), 1))
    return {
        name: _init.uniform(k, shape, -bound, bound, dtype=dtype, device=device)
        for k, (name, shape) in zip(keys, shapes.items(), strict=False)
    }


def _step(mode: str, gi: Tensor, state: Any, p: dict[str, Tensor | None]) -> tuple[Tensor, Any]:
    """One time step of ``mode``; returns ``(output_t, new_state)``."""
    if mode == "LSTM":
        h, c = state
        h, c = _R.lstm_step(gi, h, c, p["w_hh"], p["b_hh"], p["w_hr"])  # type: ignore[arg-type]
        return h, (h, c)
    if mode == "GRU":
        h = _R.gru_step(gi, state, p["w_hh"], p["b_hh"])  # type: ignore[arg-type]
        return h, h
    h = _R.rnn_step(gi, state, p["w_hh"], p["b_hh"], "tanh" if mode == "RNN_TANH" else "relu")  # type: ignore[arg-type]
    return h, h


def _check_tensor(name: str, arg: str, x: Any) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: {arg} must be a tensor, got {type(x).__name__}")


class _Recurrent(Layer, Generic[_HX, _Out]):
    """What every recurrent layer shares: torch's ``mode`` and ``apply``.

    ``_HX`` is the hidden state ``apply`` takes (``h``, or ``(h, c)`` for the LSTMs),
    ``_Out`` what it returns; each layer runs in its own ``_forward``.
    """

    # "RNN" (``nonlinearity`` picks RNN_TANH or RNN_RELU), "LSTM" or "GRU"
    _mode: ClassVar[str] = ""
    if TYPE_CHECKING:  # a field of RNNCell and RNN only

        @property
        def nonlinearity(self) -> str: ...

    @property
    def mode(self) -> str:
        """torch's ``mode``: ``'RNN_TANH'``, ``'RNN_RELU'``, ``'LSTM'`` or ``'GRU'``."""
        if self._mode == "RNN":
            return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"
        return self._mode

    def apply(
        self,
        params: Params,
        input: Tensor,
        hx: _HX | None = None,
        *,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> _Out:
        """Run the layer on ``input`` from the hidden state ``hx`` (zeros when ``None``).

        Shapes and results are torch's (see the class docstring): a cell returns the new
        hidden state, a sequence layer ``(output, final hidden state)``. ``key`` and
        ``train`` drive the dropout between stacked layers (sequence layers only).
        """
        return self._forward(params, input, hx, key, train)

    def _forward(
        self, params: Params, input: Tensor, hx: Any, key: _random.Key | None, train: bool
    ) -> Any:
        raise NotImplementedError


# --------------------------------------------------------------------------- cells


class _CellBase(_Recurrent[_HX, _Out]):
    """Shared init/forward of the three cells (``mode`` picks the gate equations)."""

    if TYPE_CHECKING:  # declared by each cell, in torch's argument order
        input_size: int
        hidden_size: int
        bias: bool
        device: Any
        dtype: Any

    def _check_fields(self) -> None:
        name = type(self).__name__
        if self.input_size <= 0 or self.hidden_size <= 0:
            raise ValueError(
                f"{name}: input_size and hidden_size must be positive, got "
                f"{self.input_size} and {self.hidden_size}"
            )
        if self._mode == "RNN" and self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {self.nonlinearity}")

    def init(self, key: _random.Key) -> Params:
        """``weight_ih`` ``(G H, input_size)``, ``weight_hh`` ``(G H, H)``, ``bias_ih``/``bias_hh``.

        ``G`` = 1 (RNN), 4 (LSTM), 3 (GRU); all from ``U(-1/sqrt(H), 1/sqrt(H))``.
        """
        gh = _GATES[self.mode] * self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {
            "weight_ih": (gh, self.input_size),
            "weight_hh": (gh, self.hidden_size),
        }
        if self.bias:
            shapes.update(bias_ih=(gh,), bias_hh=(gh,))
        return _uniform_params(key, shapes, self.hidden_size, self.device, self.dtype)

    def _forward(
        self, params: Params, input: Tensor, hx: Any, key: _random.Key | None, train: bool
    ) -> Any:
        """One step (``key`` and ``train`` unused: a cell has no dropout)."""
        name = type(self).__name__
        check_params_fast(self, params)
        _check_tensor(name, "input", input)
        if input.dim() not in (1, 2) or input.shape[-1] != self.input_size:
            raise ValueError(
                f"{name}: expected input of shape (N, {self.input_size}) or "
                f"({self.input_size},), got {tuple(input.shape)}"
            )
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input  # (N, input_size)
        lstm = self.mode == "LSTM"
        if hx is None:
            zeros = torch.zeros(x.shape[0], self.hidden_size, dtype=x.dtype, device=x.device)
            state: Any = (zeros, zeros) if lstm else zeros
        else:
            parts = tuple(hx) if lstm else (hx,)
            want = (self.hidden_size,) if unbatched else (x.shape[0], self.hidden_size)
            for part in parts:
                _check_tensor(name, "hx", part)
                if tuple(part.shape) != want:
                    raise ValueError(
                        f"{name}: expected hidden state of shape {want}, got {tuple(part.shape)}"
                    )
            parts = tuple(p.unsqueeze(0) for p in parts) if unbatched else parts
            state = parts if lstm else parts[0]
        gi = _L.linear(x, params["weight_ih"], params.get("bias_ih"))  # (N, G H)
        p = {"w_hh": params["weight_hh"], "b_hh": params.get("bias_hh"), "w_hr": None}
        _, new = _step(self.mode, gi, state, p)
        if unbatched:
            new = tuple(t.squeeze(0) for t in new) if lstm else new.squeeze(0)
        return new


class RNNCell(_CellBase[Tensor, Tensor]):
    r"""One Elman step :math:`h' = \tanh(x W_{ih}^\top + b_{ih} + h W_{hh}^\top + b_{hh})`.

    As ``torch.nn.RNNCell``; ``nonlinearity='relu'`` uses ``relu``. Params:
    ``weight_ih`` ``(H, input_size)``, ``weight_hh`` ``(H, H)``, ``bias_ih``, ``bias_hh``
    ``(H,)`` from ``U(-1/sqrt(H), 1/sqrt(H))``.

    Shapes: ``apply(params, input, hx=None)`` with ``input`` ``(N, input_size)`` or
    ``(input_size,)`` and ``hx`` ``(N, H)`` / ``(H,)`` (zeros when ``None``) ->
    ``h'`` of ``hx``'s shape.

    Example:
        >>> import fdl, torch
        >>> cell = fdl.nn.RNNCell(3, 5)
        >>> cell.apply(cell.init(fdl.random.key(0)), torch.ones(2, 3)).shape
        torch.Size([2, 5])
    """

    _mode: ClassVar[str] = "RNN"

    input_size: int
    hidden_size: int
    bias: bool = True
    nonlinearity: str = "tanh"
    device: Any = None
    dtype: Any = None


class _GatedCell(_CellBase[_HX, _HX]):
    """The fields of LSTMCell and GRUCell (torch's arguments, in order)."""

    input_size: int
    hidden_size: int
    bias: bool = True
    device: Any = None
    dtype: Any = None


class LSTMCell(_GatedCell[_LSTMState]):
    r"""One LSTM step, as ``torch.nn.LSTMCell``.

    :math:`(i, f, g, o) = x W_{ih}^\top + b_{ih} + h W_{hh}^\top + b_{hh}` (split in four),
    :math:`c' = \sigma(f) c + \sigma(i) \tanh(g)`, :math:`h' = \sigma(o) \tanh(c')`.
    Params: ``weight_ih`` ``(4H, input_size)``, ``weight_hh`` ``(4H, H)``,
    ``bias_ih``, ``bias_hh`` ``(4H,)``.

    Shapes: ``apply(params, input, hx=None)`` with ``hx = (h, c)`` ``(N, H)`` each
    (zeros when ``None``) -> ``(h', c')``.

    Example:
        >>> import fdl, torch
        >>> cell = fdl.nn.LSTMCell(3, 5)
        >>> h, c = cell.apply(cell.init(fdl.random.key(0)), torch.ones(2, 3))
        >>> h.shape, c.shape
        (torch.Size([2, 5]), torch.Size([2, 5]))
    """

    _mode: ClassVar[str] = "LSTM"


class GRUCell(_GatedCell[Tensor]):
    r"""One GRU step, as ``torch.nn.GRUCell``.

    :math:`r = \sigma(x W_{ir}^\top + b_{ir} + h W_{hr}^\top + b_{hr})`,
    :math:`z = \sigma(x W_{iz}^\top + b_{iz} + h W_{hz}^\top + b_{hz})`,
    :math:`n = \tanh(x W_{in}^\top + b_{in} + r (h W_{hn}^\top + b_{hn}))`,
    :math:`h' = (1 - z) n + z h`. Params: ``weight_ih`` ``(3H, input_size)``,
    ``weight_hh`` ``(3H, H)``, ``bias_ih``, ``bias_hh`` ``(3H,)``.

    Example:
        >>> import fdl, torch
        >>> cell = fdl.nn.GRUCell(3, 5)
        >>> cell.apply(cell.init(fdl.random.key(0)), torch.ones(3)).shape
        torch.Size([5])
    """

    _mode: ClassVar[str] = "GRU"


# --------------------------------------------------------------------------- sequence layers


class _RNNBase(_Recurrent[_HX, _Out]):
    """Shared implementation of RNN/LSTM/GRU over a whole sequence.

    The fields are LSTM's, torch's arguments in order; RNN and GRU make ``proj_size``
    a constant 0, and RNN adds ``nonlinearity`` (last).
    """

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0
    device: Any = None
    dtype: Any = None

    def _check_fields(self) -> None:
        name = type(self).__name__
        if self._mode == "RNN" and self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'."
            )
        d = self.dropout
        if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0 <= d <= 1:
            raise ValueError(
                "dropout should be a number in range [0, 1] representing the probability of "
                "an element being zeroed"
            )
        if d > 0 and self.num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, but got dropout={d} and "
                f"num_layers={self.num_layers}",
                stacklevel=4,  # the constructor's caller
            )
        if not isinstance(self.hidden_size, int) or self.hidden_size <= 0:
            raise ValueError(f"{name}: hidden_size must be a positive int, got {self.hidden_size}")
        if not isinstance(self.num_layers, int) or self.num_layers <= 0:
            raise ValueError(f"{name}: num_layers must be a positive int, got {self.num_layers}")
        if self.proj_size < 0:
            raise ValueError(
                "proj_size should be a positive integer or zero to disable projections"
            )
        if self.proj_size >= self.hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _out_size(self) -> int:
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def _param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes in torch's order (per layer, per direction: ih, hh, b_ih, b_hh, hr)."""
        gh = _GATES[self.mode] * self.hidden_size
        out = self._out_size
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            n_in = self.input_size if layer == 0 else out * self._directions
            for d in range(self._directions):
                sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
                shapes[f"weight_ih{sfx}"] = (gh, n_in)
                shapes[f"weight_hh{sfx}"] = (gh, out)
                if self.bias:
                    shapes[f"bias_ih{sfx}"] = (gh,)
                    shapes[f"bias_hh{sfx}"] = (gh,)
                if self.proj_size > 0:
                    shapes[f"weight_hr{sfx}"] = (self.proj_size, self.hidden_size)
        return shapes

    def init(self, key: _random.Key) -> Params:
        """Every parameter from ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``, as torch."""
        return _uniform_params(key, self._param_shapes(), self.hidden_size, self.device, self.dtype)

    def _initial_state(self, hx: Any, x: Tensor, unbatched: bool) -> list[Any]:
        """Per layer-direction initial states (index ``layer * D + d``), batched."""
        name = type(self).__name__
        n, lstm = x.shape[1], self.mode == "LSTM"
        nd = self.num_layers * self._directions
        sizes = [self._out_size, self.hidden_size] if lstm else [self.hidden_size]
        if hx is None:
            parts = [torch.zeros(nd, n, s, dtype=x.dtype, device=x.device) for s in sizes]
        else:
            if lstm and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0), got {type(hx).__name__}")
            parts = list(hx) if lstm else [hx]
            for part, size, what in zip(parts, sizes, ("h_0", "c_0"), strict=False):
                _check_tensor(name, what, part)
                want = (nd, size) if unbatched else (nd, n, size)
                if tuple(part.shape) != want:
                    raise ValueError(
                        f"{name}: expected {what} of shape {want}, got {tuple(part.shape)}"
                    )
            parts = [p.unsqueeze(1) for p in parts] if unbatched else parts
        if lstm:
            return [(parts[0][i], parts[1][i]) for i in range(nd)]
        return [parts[0][i] for i in range(nd)]

    def _time_loop(
        self, gi: Tensor, state: Any, p: dict[str, Tensor | None], reverse: bool
    ) -> tuple[Tensor, Any]:
        """Every step of one layer and direction: ``gi`` ``(L, N, G H)`` -> ``(L, N, H_out)``."""
        lstm = self.mode == "LSTM"
        if _use_scan_op():
            h0, c0 = state if lstm else (state, state.new_empty(0))
            w_hh, b_hh, w_hr = p["w_hh"], p["b_hh"], p["w_hr"]
            assert w_hh is not None
            out, h, c = _recurrent_scan.scan(gi, h0, c0, w_hh, b_hh, w_hr, self.mode, reverse)
            return out, ((h, c) if lstm else h)
        steps: list[Tensor] = [gi.new_empty(0)] * gi.shape[0]
        for t in range(gi.shape[0] - 1, -1, -1) if reverse else range(gi.shape[0]):
            steps[t], state = _step(self.mode, gi[t], state, p)
        return torch.stack(steps), state

    def _forward(
        self, params: Params, input: Tensor, hx: Any, key: _random.Key | None, train: bool
    ) -> tuple[Tensor, Any]:
        name = type(self).__name__
        check_params_fast(self, params)
        _per_sample_marks.vmap_only(name)  # per-example gradients through time: by vmap
        _check_tensor(name, "input", input)
        if input.dim() not in (2, 3) or input.shape[-1] != self.input_size:
            layout = "(N, L, {0})" if self.batch_first else "(L, N, {0})"
            raise ValueError(
                f"{name}: expected input of shape {layout.format(self.input_size)} or "
                f"(L, {self.input_size}), got {tuple(input.shape)}"
            )
        use_dropout = train and self.dropout > 0 and self.num_layers > 1
        if use_dropout and key is None:
            raise ValueError(f"{name}: dropout with train=True needs key=... (an fdl.random key)")
        unbatched = input.dim() == 2
        if unbatched:
            x = input.unsqueeze(1)  # (L, 1, H_in)
        elif self.batch_first:
            x = input.transpose(0, 1)  # (N, L, H_in) -> (L, N, H_in)
        else:
            x = input
        states = self._initial_state(hx, x, unbatched)
        keys = _random.split(key, self.num_layers) if use_dropout else None
        # the operator's LSTM and RNN take b_hh added to gi: add it to b_ih (a GRU's b_hn is
        # inside r * (h W_hn^T + b_hn), so it stays)
        fold_bias = _use_scan_op() and self.mode != "GRU"
        finals: list[Any] = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self._directions):
                sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
                b_ih, b_hh = params.get(f"bias_ih{sfx}"), params.get(f"bias_hh{sfx}")
                if fold_bias and b_ih is not None and b_hh is not None:
                    b_ih, b_hh = b_ih + b_hh, None  # added once, in the input projection
                gi = _L.linear(x, params[f"weight_ih{sfx}"], b_ih)  # (L, N, G H)
                p = {
                    "w_hh": params[f"weight_hh{sfx}"],
                    "b_hh": b_hh,
                    "w_hr": params.get(f"weight_hr{sfx}"),
                }
                state = states[layer * self._directions + d]
                out, state = self._time_loop(gi, state, p, reverse=d == 1)
                outs.append(out)  # (L, N, H_out)
                finals.append(state)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (L, N, D H_out)
            if keys is not None and layer < self.num_layers - 1:
                x = _L.dropout(x, self.dropout, True, key=keys[layer])
        if unbatched:
            out = x.squeeze(1)  # (L, D H_out)
        elif self.batch_first:
            out = x.transpose(0, 1)  # (N, L, D H_out)
        else:
            out = x
        if self.mode == "LSTM":
            h_n = torch.stack([s[0] for s in finals])  # (D num_layers, N, H_out)
            c_n = torch.stack([s[1] for s in finals])  # (D num_layers, N, H)
            if unbatched:
                h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
            return out, (h_n, c_n)
        h_n = torch.stack(finals)  # (D num_layers, N, H)
        return out, h_n.squeeze(1) if unbatched else h_n


_SEQ_DOC = """
    Args:
        input_size: features of the input ``x_t``.
        hidden_size: features of the hidden state ``h_t``.
        num_layers: stacked layers; layer ``l > 0`` reads layer ``l - 1``'s output.
        {extra}bias: learn ``b_ih`` and ``b_hh``.
        batch_first: input and output are ``(N, L, *)`` instead of ``(L, N, *)``
            (the states keep ``(D * num_layers, N, *)``).
        dropout: dropout probability on each layer's output but the last
            (needs ``key=`` and ``train=True``).
        bidirectional: add a reverse-time direction (``_reverse`` params);
            outputs of both directions are concatenated.
        {proj}device: device of the initialised params.
        dtype: dtype of the initialised params.
"""


@dataclasses.dataclass(frozen=True)  # makes ``nonlinearity`` a field; keeps this __init__
class RNN(_RNNBase[Tensor, tuple[Tensor, Tensor]]):
    r"""Multi-layer Elman RNN, as ``torch.nn.RNN``.

    :math:`h_t = \tanh(x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh})`
    (``relu`` with ``nonlinearity='relu'``).

    Shapes (``D = 2`` if bidirectional else 1): ``apply(params, input, hx=None)``
    with ``input`` ``(L, N, input_size)`` (``(N, L, input_size)`` if ``batch_first``,
    or unbatched ``(L, input_size)``) and ``hx`` ``(D num_layers, N, H)`` ->
    ``(output, h_n)``: ``output`` ``(L, N, D H)`` (every step of the last layer),
    ``h_n`` ``(D num_layers, N, H)`` (the last step of every layer and direction).

    Example:
        >>> import fdl, torch
        >>> rnn = fdl.nn.RNN(3, 5, num_layers=2)
        >>> out, h_n = rnn.apply(rnn.init(fdl.random.key(0)), torch.ones(7, 2, 3))
        >>> out.shape, h_n.shape
        (torch.Size([7, 2, 5]), torch.Size([2, 2, 5]))
    """

    __doc__ = (__doc__ or "") + _SEQ_DOC.format(
        extra="nonlinearity: ``'tanh'`` or ``'relu'``.\n        ", proj=""
    )

    _mode: ClassVar[str] = "RNN"
    proj_size: ClassVar[int] = 0  # type: ignore[misc]

    nonlinearity: str = "tanh"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        # torch's order, where ``nonlinearity`` is the fourth argument: the inherited fields
        # alone would put it last, so that ``RNN(3, 5, 2, "relu")`` would set ``bias``
        given = {name: value for name, value in locals().items() if name != "self"}
        for name, value in given.items():
            object.__setattr__(self, name, value)  # the frozen dataclass's own setter refuses
        self.__post_init__()


class LSTM(_RNNBase[_LSTMState, tuple[Tensor, _LSTMState]]):
    r"""Multi-layer LSTM, optionally with projections, as ``torch.nn.LSTM``.

    :math:`(i, f, g, o) = x_t W_{ih}^\top + b_{ih} + h_{t-1} W_{hh}^\top + b_{hh}`
    (split in four), :math:`c_t = \sigma(f) c_{t-1} + \sigma(i) \tanh(g)`,
    :math:`h_t = \sigma(o) \tanh(c_t)`; with ``proj_size = P > 0``,
    :math:`h_t \leftarrow h_t W_{hr}^\top` (``weight_hr_l{k}`` ``(P, H)``), and
    ``h_t`` has ``P`` features.

    Shapes (``D = 2`` if bidirectional else 1, ``H_out = P or H``):
    ``apply(params, input, hx=None)`` with ``hx = (h_0, c_0)`` of shapes
    ``(D num_layers, N, H_out)`` and ``(D num_layers, N, H)`` ->
    ``(output, (h_n, c_n))`` with ``output`` ``(L, N, D H_out)`` (``batch_first``:
    ``(N, L, D H_out)``; unbatched: no ``N``).

    Example:
        >>> import fdl, torch
        >>> lstm = fdl.nn.LSTM(3, 5, batch_first=True, bidirectional=True, proj_size=2)
        >>> out, (h_n, c_n) = lstm.apply(lstm.init(fdl.random.key(0)), torch.ones(4, 7, 3))
        >>> out.shape, h_n.shape, c_n.shape
        (torch.Size([4, 7, 4]), torch.Size([2, 4, 2]), torch.Size([2, 4, 5]))
    """

    __doc__ = (__doc__ or "") + _SEQ_DOC.format(
        extra="",
        proj="proj_size: ``P > 0`` adds ``weight_hr`` projections of ``h_t`` to ``P``.\n        ",
    )

    _mode: ClassVar[str] = "LSTM"


class GRU(_RNNBase[Tensor, tuple[Tensor, Tensor]]):
    r"""Multi-layer GRU, as ``torch.nn.GRU``.

    :math:`r_t = \sigma(x_t W_{ir}^\top + b_{ir} + h_{t-1} W_{hr}^\top + b_{hr})`,
    :math:`z_t = \sigma(x_t W_{iz}^\top + b_{iz} + h_{t-1} W_{hz}^\top + b_{hz})`,
    :math:`n_t = \tanh(x_t W_{in}^\top + b_{in} + r_t (h_{t-1} W_{hn}^\top + b_{hn}))`,
    :math:`h_t = (1 - z_t) n_t + z_t h_{t-1}`.

    Shapes as :class:`RNN`: ``apply(params, input, hx=None) -> (output, h_n)``.

    Example:
        >>> import fdl, torch
        >>> gru = fdl.nn.GRU(3, 5)
        >>> params = gru.init(fdl.random.key(0))
        >>> out, h_n = gru.apply(params, torch.ones(7, 3))  # unbatched, from zeros
        >>> out, h_n = gru.apply(params, torch.ones(4, 3), h_n)  # carry on from h_n
        >>> out.shape, h_n.shape
        (torch.Size([4, 5]), torch.Size([1, 5]))
    """

    __doc__ = (__doc__ or "") + _SEQ_DOC.format(extra="", proj="")

    _mode: ClassVar[str] = "GRU"
    proj_size: ClassVar[int] = 0  # type: ignore[misc]
