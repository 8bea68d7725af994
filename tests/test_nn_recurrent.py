"""Parity with torch (values, final states, gradients), keys, init, dropout, vmap and compile
for the recurrent layers and cells.

Every configuration is one registry line; every generic property is parametrised over the
registry. The torch reference runs through ``torch.func.functional_call`` on the same flat
``state_dict`` the fdl layer loads, so gradients with respect to every parameter, the input
and the initial states are compared.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch

import fdl
from fdl import tree as ft
from fdl.testing import assert_parity, assert_trees_close

DTYPES = [torch.float64, torch.float32]
L, N, H_IN, H = 5, 2, 3, 4

# (class name, constructor kwargs, unbatched input, pass initial states)
_LSTM_PRODUCT = [
    ("LSTM", dict(bidirectional=bi, num_layers=nl, proj_size=ps, batch_first=bf), unb, hx)
    for (bi, nl, ps, bf, unb), hx in zip(
        itertools.product([False, True], [1, 2], [0, 2], [False, True], [False, True]),
        itertools.cycle([False, True, True]),
        strict=False,
    )
]
SEQ_CASES: list[tuple[str, dict[str, Any], bool, bool]] = [
    ("RNN", {}, False, False),
    ("RNN", dict(nonlinearity="relu", num_layers=2), False, True),
    ("RNN", dict(bias=False, bidirectional=True), True, True),
    ("RNN", dict(batch_first=True, num_layers=2, bidirectional=True, dropout=0.3), False, True),
    ("RNN", dict(nonlinearity="relu", batch_first=True, num_layers=3), True, False),
    *_LSTM_PRODUCT,
    ("LSTM", dict(bias=False, proj_size=3, num_layers=2, bidirectional=True), False, True),
    ("LSTM", dict(num_layers=3, dropout=0.5), False, True),
    ("GRU", {}, False, False),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True), False, True),
    ("GRU", dict(bias=False, num_layers=2), True, True),
    ("GRU", dict(bidirectional=True), True, False),
]

# (class name, constructor kwargs, unbatched input, pass the state)
CELL_CASES: list[tuple[str, dict[str, Any], bool, bool]] = [
    ("RNNCell", {}, False, False),
    ("RNNCell", dict(nonlinearity="relu", bias=False), False, True),
    ("RNNCell", {}, True, True),
    ("LSTMCell", {}, False, False),
    ("LSTMCell", dict(bias=False), False, True),
    ("LSTMCell", {}, True, True),
    ("GRUCell", {}, False, True),
    ("GRUCell", dict(bias=False), True, False),
    ("GRUCell", {}, True, True),
]


def _id(case: tuple[str, dict[str, Any], bool, bool]) -> str:
    name, kw, unb, hx = case
    opts = ",".join(f"{k}={v}" for k, v in kw.items())
    return f"{name}({opts}){'-unbatched' if unb else ''}{'-hx' if hx else ''}"


def _modules(case: Any, dtype: torch.dtype, seed: int = 0) -> tuple[Any, torch.nn.Module]:
    name, kw, _, _ = case
    torch.manual_seed(seed)
    module = getattr(torch.nn, name)(H_IN, H, dtype=dtype, **kw).eval()  # no dropout
    return getattr(fdl.nn, name)(H_IN, H, dtype=dtype, **kw), module


def _seq_inputs(case: Any, dtype: torch.dtype, gen: torch.Generator) -> tuple[Any, ...]:
    name, kw, unbatched, with_hx = case
    if unbatched:
        x = torch.randn(L, H_IN, dtype=dtype, generator=gen)
    elif kw.get("batch_first"):
        x = torch.randn(N, L, H_IN, dtype=dtype, generator=gen)
    else:
        x = torch.randn(L, N, H_IN, dtype=dtype, generator=gen)
    if not with_hx:
        return (x,)
    d = 2 if kw.get("bidirectional") else 1
    lead = (d * kw.get("num_layers", 1),) + (() if unbatched else (N,))
    h_out = kw.get("proj_size") or H
    h0 = torch.randn(*lead, h_out, dtype=dtype, generator=gen)
    if name == "LSTM":
        return (x, (h0, torch.randn(*lead, H, dtype=dtype, generator=gen)))
    return (x, h0)


def _cell_inputs(case: Any, dtype: torch.dtype, gen: torch.Generator) -> tuple[Any, ...]:
    name, _, unbatched, with_hx = case
    lead = () if unbatched else (N,)
    x = torch.randn(*lead, H_IN, dtype=dtype, generator=gen)
    if not with_hx:
        return (x,)
    h = torch.randn(*lead, H, dtype=dtype, generator=gen)
    return (
        (x, (h, torch.randn(*lead, H, dtype=dtype, generator=gen)))
        if name == "LSTMCell"
        else (x, h)
    )


def _check_parity(layer: Any, module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
    flat = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def fdl_fn(sd: dict[str, torch.Tensor], *args: Any) -> Any:
        return layer.apply(fdl.nn.load_state_dict(sd), *args)

    def torch_fn(sd: dict[str, torch.Tensor], *args: Any) -> Any:
        return torch.func.functional_call(module, sd, args)

    assert_parity(fdl_fn, torch_fn, flat, *inputs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SEQ_CASES, ids=_id)
def test_sequence_layer_matches_torch(case: Any, dtype: torch.dtype) -> None:
    """Outputs, final states and gradients w.r.t. every param, the input and hx."""
    layer, module = _modules(case, dtype)
    gen = torch.Generator().manual_seed(1)
    _check_parity(layer, module, _seq_inputs(case, dtype, gen))


@pytest.fixture
def scan_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the time loop through the ``fdl::recurrent_scan`` operator (what compiled code uses)."""
    monkeypatch.setattr(fdl.nn.recurrent, "_SCAN_OP", "always")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SEQ_CASES[::2], ids=_id)
def test_scan_operator_matches_torch(case: Any, dtype: torch.dtype, scan_op: None) -> None:
    """The opaque time-loop operator: same values, states and gradients as torch."""
    layer, module = _modules(case, dtype)
    _check_parity(layer, module, _seq_inputs(case, dtype, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("case", [c for c in SEQ_CASES if not c[2] and not c[3]], ids=_id)
def test_scan_operator_under_vmap_equals_python_loop(
    case: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-example gradients (vmap of grad) and ensembles (vmap of params) via the operator."""
    layer, _ = _modules(case, torch.float64)
    (x,) = _seq_inputs(case, torch.float64, torch.Generator().manual_seed(3))
    batch_dim = 0 if case[1].get("batch_first") else 1

    def loss(p: Any, x: torch.Tensor) -> torch.Tensor:
        return sum((t**2).sum() for t in ft.leaves(layer.apply(p, x)))

    def loss_one(p: Any, xi: torch.Tensor) -> torch.Tensor:
        return loss(p, xi.unsqueeze(batch_dim))

    params = layer.init(fdl.random.key(0))
    members = ft.stack([layer.init(k) for k in fdl.random.split(fdl.random.key(4), 2)])

    def run() -> Any:
        per_example = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, batch_dim))
        ensemble = torch.func.vmap(torch.func.grad(loss), in_dims=(0, None))
        return per_example(params, x), ensemble(members, x)

    monkeypatch.setattr(fdl.nn.recurrent, "_SCAN_OP", "never")
    expected = run()
    monkeypatch.setattr(fdl.nn.recurrent, "_SCAN_OP", "always")
    assert_trees_close(run(), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CELL_CASES, ids=_id)
def test_cell_matches_torch(case: Any, dtype: torch.dtype) -> None:
    layer, module = _modules(case, dtype)
    _check_parity(layer, module, _cell_inputs(case, dtype, torch.Generator().manual_seed(2)))


@pytest.mark.parametrize("case", SEQ_CASES + CELL_CASES, ids=_id)
def test_init_keys_shapes_order_and_range(case: Any) -> None:
    """torch's state_dict keys in torch's order, shapes, dtype, and U(-1/sqrt(H), 1/sqrt(H))."""
    layer, module = _modules(case, torch.float64)
    params = layer.init(fdl.random.key(3))
    sd = fdl.nn.state_dict(params)
    assert list(sd) == list(module.state_dict())
    for k, v in module.state_dict().items():
        assert sd[k].shape == v.shape and sd[k].dtype == torch.float64, k
        assert float(sd[k].abs().max()) <= 1 / math.sqrt(H)
    flat = torch.cat([v.flatten() for v in sd.values()])
    assert float(flat.std()) > 0.5 / math.sqrt(3 * H)  # not all zeros, uniform's spread
    assert_trees_close(layer.init(fdl.random.key(3)), params)  # same key, same params


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"])
def test_load_torch_state_dict_same_outputs(name: str) -> None:
    """A torch module's state_dict, loaded as it is, gives torch's outputs (float32)."""
    torch.manual_seed(4)
    seq = not name.endswith("Cell")
    kw: dict[str, Any] = dict(num_layers=2, bidirectional=True) if seq else {}
    module = getattr(torch.nn, name)(H_IN, H, **kw)
    layer = getattr(fdl.nn, name)(H_IN, H, **kw)
    params = fdl.nn.load_state_dict(module.state_dict(), layer)
    x = torch.randn(L, N, H_IN) if seq else torch.randn(N, H_IN)
    with torch.no_grad():
        assert_trees_close(layer.apply(params, x), module(x))


# -------------------------------------------------------------------------------- dropout and keys


def _dropout_lstm() -> tuple[Any, Any, torch.Tensor]:
    layer = fdl.nn.LSTM(H_IN, H, num_layers=3, dropout=0.5, dtype=torch.float64)
    x = torch.randn(L, N, H_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    return layer, layer.init(fdl.random.key(0)), x


def test_dropout_is_deterministic_by_key_and_off_in_eval() -> None:
    layer, params, x = _dropout_lstm()
    k1, k2 = fdl.random.split(fdl.random.key(7))
    a = layer.apply(params, x, key=k1, train=True)
    assert_trees_close(layer.apply(params, x, key=k1, train=True), a)
    b = layer.apply(params, x, key=k2, train=True)
    assert not torch.equal(a[0], b[0])
    evaluated = layer.apply(params, x)
    assert not torch.equal(a[0], evaluated[0])
    assert_trees_close(layer.apply(params, x, key=k1), evaluated)  # train=False: no dropout
    with pytest.raises(ValueError, match="key"):
        layer.apply(params, x, train=True)


def test_dropout_zero_in_train_equals_eval() -> None:
    layer = fdl.nn.GRU(H_IN, H, num_layers=2, dropout=0.0, dtype=torch.float64)
    params = layer.init(fdl.random.key(0))
    x = torch.randn(L, N, H_IN, dtype=torch.float64)
    assert_trees_close(
        layer.apply(params, x, key=fdl.random.key(1), train=True), layer.apply(params, x)
    )


def test_dropout_only_between_layers() -> None:
    """The last layer's output is not dropped: with one layer, train=True changes nothing."""
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        layer = fdl.nn.LSTM(H_IN, H, num_layers=1, dropout=0.5, dtype=torch.float64)
    params = layer.init(fdl.random.key(0))
    x = torch.randn(L, N, H_IN, dtype=torch.float64)
    assert_trees_close(
        layer.apply(params, x, key=fdl.random.key(1), train=True), layer.apply(params, x)
    )


def test_vmap_over_keys_equals_loop() -> None:
    layer, params, x = _dropout_lstm()
    keys = fdl.random.split(fdl.random.key(9), 3)
    batched = torch.func.vmap(lambda k: layer.apply(params, x, key=k, train=True))(keys)
    looped = ft.stack([layer.apply(params, x, key=k, train=True) for k in keys])
    assert_trees_close(batched, looped)


@pytest.mark.parametrize(
    "case", [c for c in SEQ_CASES + CELL_CASES if c[1].get("num_layers", 1) <= 2][::3], ids=_id
)
def test_vmap_over_ensemble_params_equals_loop(case: Any) -> None:
    layer, _ = _modules(case, torch.float64)
    members = [layer.init(k) for k in fdl.random.split(fdl.random.key(11), 3)]
    gen = torch.Generator().manual_seed(12)
    inputs = (_cell_inputs if case[0].endswith("Cell") else _seq_inputs)(case, torch.float64, gen)
    batched = torch.func.vmap(lambda p: layer.apply(p, *inputs))(ft.stack(members))
    assert_trees_close(batched, ft.stack([layer.apply(p, *inputs) for p in members]))


# ------------------------------------------------------------------------------------------ errors


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="proj_size has to be smaller"):
        fdl.nn.LSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        fdl.nn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout should be a number"):
        fdl.nn.GRU(3, 4, dropout=1.5)
    lstm = fdl.nn.LSTM(3, 4, num_layers=2)
    params = lstm.init(fdl.random.key(0))
    with pytest.raises(ValueError, match=r"\(L, N, 3\)"):
        lstm.apply(params, torch.zeros(5, 2, 7))
    with pytest.raises(ValueError, match=r"h_0 of shape \(2, 2, 4\)"):
        lstm.apply(params, torch.zeros(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(2, 2, 4)))
    bad = dict(params, weight_hh_l1=torch.zeros(16, 5))
    with pytest.raises(ValueError, match="weight_hh_l1"):
        lstm.apply(bad, torch.zeros(5, 2, 3))


def test_apply_is_pure() -> None:
    layer, params, x = _dropout_lstm()
    hx = (torch.randn(3, N, H, dtype=torch.float64), torch.randn(3, N, H, dtype=torch.float64))
    fdl.testing.assert_pure(
        lambda p, x, h: layer.apply(p, x, h, key=fdl.random.key(0), train=True), params, x, hx
    )


# ----------------------------------------------------------- a language model: compile, per-sample

VOCAB = 13


def _lstm_lm(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    emb = fdl.nn.Embedding(VOCAB, 6, dtype=dtype)
    lstm = fdl.nn.LSTM(6, 8, num_layers=2, dropout=0.2, batch_first=True, dtype=dtype)
    head = fdl.nn.Linear(8, VOCAB, dtype=dtype)

    def init(key: Any) -> Any:
        k = fdl.random.split(key, 3)
        return {"emb": emb.init(k[0]), "lstm": lstm.init(k[1]), "head": head.init(k[2])}

    def loss_fn(params: Any, x: torch.Tensor, y: torch.Tensor, key: Any = None) -> torch.Tensor:
        h, _ = lstm.apply(
            params["lstm"], emb.apply(params["emb"], x), key=key, train=key is not None
        )
        logits = head.apply(params["head"], h)  # (N, L, VOCAB)
        return fdl.losses.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))

    return init, loss_fn


def test_compiled_lstm_lm_step_never_recompiles() -> None:
    init, loss_fn = _lstm_lm()
    opt = fdl.optim.sgd(lr=0.1)  # (adam's first step is sign(grad): noise for zero grads)
    params = init(fdl.random.key(0))
    state = opt.init(params)
    step = fdl.train.make_train_step(loss_fn, opt)
    eager = fdl.train.make_train_step(loss_fn, opt, compile=False)
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randint(0, VOCAB, (3, 6), generator=g), torch.randint(0, VOCAB, (3, 6), generator=g))
        for _ in range(3)
    ]
    keys = fdl.random.split(fdl.random.key(1), 3)
    p_c, s_c, loss_c = step(params, state, *batches[0], keys[0])
    p_e, _, loss_e = eager(params, state, *batches[0], keys[0])
    assert_trees_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert_trees_close(p_c, p_e, rtol=1e-4, atol=1e-5)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for (x, y), k in zip(batches[1:], keys[1:], strict=True):
            p_c, s_c, loss_c = step(p_c, s_c, x, y, k)
    assert torch.isfinite(loss_c)


def test_per_sample_grads_of_lstm_lm_equal_loop() -> None:
    init, loss_fn = _lstm_lm(torch.float64)
    params = init(fdl.random.key(0))
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (3, 5), generator=g)
    y = torch.randint(0, VOCAB, (3, 5), generator=g)
    grads = fdl.per_sample_grads(loss_fn)(params, x, y)
    norms = fdl.per_sample_grad_norms(loss_fn)(params, x, y)
    loop = [torch.func.grad(loss_fn)(params, x[i : i + 1], y[i : i + 1]) for i in range(3)]
    assert_trees_close(grads, ft.stack(loop))
    assert_trees_close(norms, torch.stack([ft.global_norm(gr) for gr in loop]))


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU"])
def test_positional_arguments_follow_torch(name):
    import dataclasses
    import inspect

    ours = [f.name for f in dataclasses.fields(getattr(fdl.nn, name)) if f.init]
    params = inspect.signature(getattr(torch.nn, name).__init__).parameters.values()
    theirs = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD and p.name != "self"]
    assert ours[: len(theirs)] == theirs


# torch's positional order, every constructor argument given positionally (RNN: nonlinearity 4th)
_POSITIONAL = {
    "RNN": (3, 5, 2, "relu", False, True, 0.25, True),
    "LSTM": (3, 5, 2, False, True, 0.25, True, 2),
    "GRU": (3, 5, 2, False, True, 0.25, True),
}


@pytest.mark.parametrize("name", sorted(_POSITIONAL))
def test_all_positional_arguments_mean_what_they_mean_in_torch(name: str) -> None:
    args = _POSITIONAL[name]
    ours, theirs = getattr(fdl.nn, name)(*args), getattr(torch.nn, name)(*args)
    fields = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout"]
    fields += ["bidirectional", "proj_size"] + (["nonlinearity"] if name == "RNN" else [])
    assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
    assert sorted(ours.init(fdl.random.key(0))) == sorted(theirs.state_dict())
