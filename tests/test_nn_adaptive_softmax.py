"""``fdl.nn.AdaptiveLogSoftmaxWithLoss`` against ``torch.nn.AdaptiveLogSoftmaxWithLoss``.

Every config of the registry loads torch's ``state_dict`` and compares ``output``,
``loss``, ``log_prob`` and ``predict``, and the gradients with respect to every param
and the input (float64 to 1e-10, float32 to 1e-5), batched and unbatched.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import fdl
from fdl.nn import AdaptiveLogSoftmaxWithLoss

# (in_features, n_classes, cutoffs, div_value, head_bias): adding a config is one line
CONFIGS: list[tuple[int, int, list[int], float, bool]] = [
    (16, 20, [4, 10], 2.0, False),
    (8, 10, [3], 4.0, True),
    (12, 30, [5, 12, 20], 1.5, True),
    (8, 15, [2, 6, 10], 4.0, False),  # hidden sizes 2, 0, 0: empty projections
    (6, 7, [1, 6], 1.0, True),  # a one-class shortlist and a one-class cluster
]
IDS = [f"d{c[0]}-n{c[1]}-c{'_'.join(map(str, c[2]))}-div{c[3]}-b{int(c[4])}" for c in CONFIGS]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
DTYPES = [torch.float64, torch.float32]


def _pair(cfg: tuple, dtype: torch.dtype, seed: int = 0) -> tuple[Any, Any, Any]:
    d, n, cutoffs, div, bias = cfg
    torch.manual_seed(seed)
    ref = torch.nn.AdaptiveLogSoftmaxWithLoss(d, n, cutoffs, div_value=div, head_bias=bias)
    ref = ref.to(dtype)
    ours = AdaptiveLogSoftmaxWithLoss(d, n, cutoffs, div_value=div, head_bias=bias, dtype=dtype)
    params = fdl.nn.load_state_dict(ref.state_dict(), ours)
    return ref, ours, params


def _data(cfg: tuple, dtype: torch.dtype, n_rows: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    d, n, *_ = cfg
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_rows, d, generator=g, dtype=dtype)
    target = torch.cat([torch.arange(n), torch.randint(0, n, (n_rows,), generator=g)])[:n_rows]
    return x, target[torch.randperm(n_rows, generator=g)]


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(got, want, **TOL[dtype])


def _leaves(params: Any) -> dict[str, torch.Tensor]:
    return fdl.nn.state_dict(params)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_params_are_named_and_shaped_as_torchs(cfg: tuple) -> None:
    ref, ours, _ = _pair(cfg, torch.float64)
    fresh = fdl.nn.state_dict(ours.init(fdl.random.key(0)))
    want = ref.state_dict()
    assert list(fresh) == list(want)
    assert {k: v.shape for k, v in fresh.items()} == {k: v.shape for k, v in want.items()}
    assert all(v.dtype == torch.float64 for v in fresh.values())
    # Linear's default draw: |w| <= 1/sqrt(fan_in)
    for k, v in fresh.items():
        fan_in = fresh[k.replace("bias", "weight")].shape[1]
        if v.numel() and fan_in:
            assert v.abs().max() <= fan_in**-0.5, k
    # the two halves draw from independent keys
    if len(ours.cutoffs) > 1:
        t = ours.init(fdl.random.key(0))["tail"]
        assert not torch.equal(t["0"]["0"]["weight"][:1, :1], t["1"]["0"]["weight"][:1, :1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_forward_and_gradients_match_torch(cfg: tuple, dtype: torch.dtype) -> None:
    ref, ours, params = _pair(cfg, dtype)
    x, target = _data(cfg, dtype)
    x_ref = x.clone().requires_grad_()
    out_ref, loss_ref = ref(x_ref, target)
    leaves = {k: v.clone().requires_grad_() for k, v in _leaves(params).items()}
    x_ours = x.clone().requires_grad_()
    out, loss = ours.apply(fdl.nn.load_state_dict(leaves, ours), x_ours, target)
    _close(out, out_ref, dtype)
    _close(loss, loss_ref, dtype)
    # gradients of a weighted sum of the outputs plus the loss: every row's own path
    w = torch.linspace(0.5, 1.5, len(target), dtype=dtype)
    refs = dict(ref.named_parameters())
    names = list(leaves)
    g_ref = torch.autograd.grad(
        (out_ref * w).sum() + loss_ref, [refs[k] for k in names] + [x_ref], allow_unused=True
    )
    g = torch.autograd.grad((out * w).sum() + loss, [leaves[k] for k in names] + [x_ours])
    for name, a, b in zip([*names, "input"], g, g_ref, strict=True):
        _close(a, torch.zeros_like(a) if b is None else b, dtype)
        assert a.shape == (x.shape if name == "input" else leaves[name].shape)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_unbatched_input_matches_torch(cfg: tuple, dtype: torch.dtype) -> None:
    ref, ours, params = _pair(cfg, dtype)
    x, target = _data(cfg, dtype)
    for i in (0, 5, len(target) - 1):
        xi = x[i].clone().requires_grad_()
        xr = x[i].clone().requires_grad_()
        out, loss = ours.apply(params, xi, target[i])
        out_ref, loss_ref = ref(xr, target[i])
        assert out.shape == out_ref.shape == () and loss.shape == ()
        _close(out, out_ref, dtype)
        _close(loss, loss_ref, dtype)
        _close(torch.autograd.grad(loss, xi)[0], torch.autograd.grad(loss_ref, xr)[0], dtype)
        # torch's log_prob / predict take (N, in_features) only; fdl also takes one row
        _close(ours.log_prob(params, x[i]), ref.log_prob(x[i : i + 1])[0].detach(), dtype)
        assert torch.equal(ours.predict(params, x[i]), ref.predict(x[i : i + 1])[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_log_prob_matches_torch_with_gradients(cfg: tuple, dtype: torch.dtype) -> None:
    ref, ours, params = _pair(cfg, dtype)
    x, _ = _data(cfg, dtype)
    leaves = {k: v.clone().requires_grad_() for k, v in _leaves(params).items()}
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    lp = ours.log_prob(fdl.nn.load_state_dict(leaves, ours), x_ours)
    lp_ref = ref.log_prob(x_ref)
    assert lp.shape == (len(x), cfg[1])
    _close(lp, lp_ref, dtype)
    _close(lp.exp().sum(1), torch.ones(len(x), dtype=dtype), dtype)
    w = torch.randn(lp.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    refs = dict(ref.named_parameters())
    g = torch.autograd.grad((lp * w).sum(), [*leaves.values(), x_ours])
    g_ref = torch.autograd.grad((lp_ref * w).sum(), [refs[k] for k in leaves] + [x_ref])
    for a, b in zip(g, g_ref, strict=True):
        _close(a, b, dtype)


@pytest.mark.parametrize(
    "cfg", [c for c in CONFIGS if c[4]], ids=[i for i, c in zip(IDS, CONFIGS, strict=True) if c[4]]
)
@pytest.mark.parametrize("favour", ["shortlist", "tail", "mixed"])
def test_predict_matches_torch_in_each_of_its_branches(cfg: tuple, favour: str) -> None:
    ref, ours, _ = _pair(cfg, torch.float64)
    x, _ = _data(cfg, torch.float64, n_rows=16)
    s = ref.shortlist_size
    with torch.no_grad():  # a head bias that sends the head's argmax to one side
        if favour == "shortlist":
            ref.head.bias[:s] += 50.0
        elif favour == "tail":
            ref.head.bias[s:] += 50.0
        else:
            x = x * 20.0
    params = fdl.nn.load_state_dict(ref.state_dict(), ours)
    in_tail = ref.head(x).argmax(1) >= s
    branch = {(False, False): "shortlist", (True, True): "tail", (False, True): "mixed"}
    assert branch[bool(in_tail.all()), bool(in_tail.any())] == favour
    got = ours.predict(params, x)
    assert torch.equal(got, ref.predict(x))
    assert torch.equal(got, ref.log_prob(x).argmax(1))


def test_apply_is_pure_and_compiles() -> None:
    cfg = CONFIGS[2]
    ref, ours, params = _pair(cfg, torch.float32)
    x, target = _data(cfg, torch.float32)
    before = {k: v.clone() for k, v in _leaves(params).items()}
    x0, t0 = x.clone(), target.clone()
    out, loss = ours.apply(params, x, target)
    assert torch.equal(x, x0) and torch.equal(target, t0)
    assert all(torch.equal(v, before[k]) for k, v in _leaves(params).items())

    def loss_fn(p: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return ours.apply(p, x, t).loss

    step = torch.compile(torch.func.grad_and_value(loss_fn), fullgraph=True)
    grads, value = step(params, x, target)
    grads_eager, value_eager = torch.func.grad_and_value(loss_fn)(params, x, target)
    _close(value, loss, torch.float32)
    fdl.testing.assert_trees_close(grads, grads_eager, rtol=1e-5, atol=1e-5)
    # a second batch of the same shape reuses the graph
    x2, t2 = _data(cfg, torch.float32)
    _close(step(params, x2 * 2, t2.flip(0))[1], loss_fn(params, x2 * 2, t2.flip(0)), torch.float32)


def test_vmap_over_rows_equals_the_batch() -> None:
    cfg = CONFIGS[0]
    _, ours, params = _pair(cfg, torch.float64)
    x, target = _data(cfg, torch.float64)
    rows = torch.func.vmap(lambda xi, ti: ours.apply(params, xi, ti).output)(x, target)
    _close(rows, ours.apply(params, x, target).output, torch.float64)


BAD_CUTOFFS = [[], [5, 3], [0, 4], [4, 20], [4, 4], [2.5], [19, 20]]


@pytest.mark.parametrize("cutoffs", BAD_CUTOFFS, ids=str)
def test_bad_cutoffs_raise_as_torch(cutoffs: list) -> None:
    with pytest.raises(ValueError) as want:
        torch.nn.AdaptiveLogSoftmaxWithLoss(8, 20, cutoffs)
    with pytest.raises(ValueError) as got:
        AdaptiveLogSoftmaxWithLoss(8, 20, cutoffs)
    assert str(got.value) == str(want.value)


BAD_CALLS = [
    ("2-d target", (4, 8), torch.zeros(4, 2, dtype=torch.long)),
    ("batch mismatch", (4, 8), torch.zeros(3, dtype=torch.long)),
    ("1-d target, 3-d input", (4, 2, 8), torch.zeros(4, dtype=torch.long)),
    ("0-d target, 2-d input", (4, 8), torch.tensor(1)),
    ("target too large", (4, 8), torch.tensor([0, 1, 20, 3])),
    ("negative target", (4, 8), torch.tensor([0, -1, 2, 3])),
]


@pytest.mark.parametrize(("case", "shape", "target"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_calls_raise_torchs_errors(case: str, shape: tuple, target: torch.Tensor) -> None:
    ref, ours, params = _pair((8, 20, [4, 10], 4.0, False), torch.float64)
    x = torch.randn(shape, dtype=torch.float64)
    with pytest.raises(RuntimeError) as want:
        ref(x, target)
    with pytest.raises(RuntimeError) as got:
        ours.apply(params, x, target)
    assert str(got.value) == str(want.value)


def test_fdl_specific_checks() -> None:
    ours = AdaptiveLogSoftmaxWithLoss(8, 20, [4, 10])
    params = ours.init(fdl.random.key(0))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 8\)"):
        ours.apply(params, torch.randn(4, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor"):
        ours.apply(params, torch.randn(4, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="expects input of shape"):
        ours.log_prob(params, torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="head.weight"):
        ours.log_prob({**params, "head": {"weight": torch.zeros(3, 8)}}, torch.randn(2, 8))
    assert ours == AdaptiveLogSoftmaxWithLoss(8, 20, (4, 10)) and ours.cutoffs == (4, 10)
    assert (ours.shortlist_size, ours.n_clusters, ours.head_size) == (4, 2, 6)
    assert hash(ours) == hash(AdaptiveLogSoftmaxWithLoss(8, 20, [4, 10]))
