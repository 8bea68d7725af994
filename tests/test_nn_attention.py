"""MultiheadAttention and scaled_dot_product_attention vs torch: values, weights, gradients
w.r.t. every parameter and the inputs, every mask kind, dropout keys and vmap.

Each configuration is one registry line: constructor kwargs, forward kwargs (masks named by
kind, built in ``_mask``) and how query/key/value are passed.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import fdl
from fdl import tree as ft
from fdl.nn import functional as fF
from fdl.testing import assert_parity, assert_trees_close

DTYPES = [torch.float64, torch.float32]
# float32 gradients of attention are sums of O(1) terms over every key; where they cancel to
# a small entry the rounding error is ~1e-7 * sum |terms| (more with a large score scale, as
# softmax saturates), so gradients get an absolute tolerance of 1e-5 in float32


def _grad_atol(dtype: torch.dtype) -> float | None:
    return 1e-5 if dtype == torch.float32 else None


E, HEADS, L, S, N = 8, 2, 4, 6, 3

# (constructor kwargs, forward kwargs, inputs): inputs "cross" (three tensors), "self"
# (query is key is value), "kv" (key is value), "unbatched"; masks by kind (see _mask)
MHA_CASES: list[tuple[dict[str, Any], dict[str, Any], str]] = [
    ({}, {}, "cross"),
    ({}, {}, "self"),
    ({}, {}, "kv"),
    ({}, dict(attn_mask="bool2d"), "cross"),
    ({}, dict(attn_mask="float2d"), "cross"),
    ({}, dict(attn_mask="bool3d"), "cross"),
    ({}, dict(attn_mask="float3d", need_weights=False), "cross"),
    ({}, dict(key_padding_mask="bool"), "cross"),
    ({}, dict(key_padding_mask="float", need_weights=False), "cross"),
    ({}, dict(key_padding_mask="bool", attn_mask="float2d"), "self"),
    ({}, dict(attn_mask="causal", is_causal=True, need_weights=False), "self"),
    ({}, dict(attn_mask="causal", is_causal=True), "cross"),
    (
        {},
        dict(attn_mask="causal", is_causal=True, key_padding_mask="bool", need_weights=False),
        "self",
    ),
    ({}, dict(average_attn_weights=False), "cross"),
    ({}, dict(need_weights=False), "self"),
    (dict(batch_first=True), dict(key_padding_mask="bool"), "cross"),
    (dict(batch_first=True), dict(attn_mask="bool3d", need_weights=False), "self"),
    (dict(kdim=3, vdim=5), {}, "cross"),
    (dict(kdim=3, vdim=5, batch_first=True), dict(attn_mask="bool2d", need_weights=False), "cross"),
    (dict(kdim=5, vdim=5), dict(key_padding_mask="bool"), "kv"),
    (dict(add_bias_kv=True), dict(attn_mask="bool2d", key_padding_mask="bool"), "cross"),
    (dict(add_zero_attn=True), dict(attn_mask="float3d", key_padding_mask="bool"), "cross"),
    (
        dict(add_bias_kv=True, add_zero_attn=True, kdim=3, vdim=5),
        dict(key_padding_mask="float", need_weights=False),
        "cross",
    ),
    (
        dict(add_bias_kv=True, add_zero_attn=True),
        dict(attn_mask="causal", is_causal=True, need_weights=False),
        "self",
    ),
    (dict(bias=False), {}, "self"),
    (dict(bias=False, add_bias_kv=True), dict(average_attn_weights=False), "cross"),
    (dict(dropout=0.3), {}, "cross"),  # eval: no dropout
    ({}, {}, "unbatched"),
    ({}, dict(attn_mask="bool2d", key_padding_mask="bool"), "unbatched"),
    (
        dict(kdim=3, vdim=5, add_bias_kv=True),
        dict(attn_mask="float3d", average_attn_weights=False),
        "unbatched",
    ),
]


def _id(case: Any) -> str:
    ctor, fwd, inputs = case
    c = ",".join(f"{k}={v}" for k, v in ctor.items())
    f = ",".join(f"{k}={v}" for k, v in fwd.items())
    return f"MHA({c})-{inputs}-{f}"


def _mask(
    kind: str, name: str, length: int, unbatched: bool, dtype: torch.dtype, g: torch.Generator
) -> Any:
    """Masks that leave every query at least one key (no fully masked row)."""
    n = 1 if unbatched else N
    if name == "key_padding_mask":
        masked = torch.zeros(n, S, dtype=torch.bool)
        masked[0, -2:] = True
        masked = masked[0] if unbatched else masked
        if kind == "bool":
            return masked
        return torch.randn(masked.shape, dtype=dtype, generator=g).masked_fill(
            masked, float("-inf")
        )
    if kind == "causal":
        return torch.ones(length, S, dtype=torch.bool).tril().logical_not()
    shape = (length, S) if kind.endswith("2d") else (n * HEADS, length, S)
    masked = torch.rand(shape, generator=g) < 0.4
    masked[..., 0] = False
    if kind.startswith("bool"):
        return masked
    return torch.randn(shape, dtype=dtype, generator=g).masked_fill(masked, float("-inf"))


def _build(case: Any, dtype: torch.dtype) -> tuple[Any, torch.nn.Module, tuple, dict, str]:
    ctor, fwd, kind = case
    torch.manual_seed(0)
    module = torch.nn.MultiheadAttention(E, HEADS, dtype=dtype, **ctor).eval()
    layer = fdl.nn.MultiheadAttention(E, HEADS, dtype=dtype, **ctor)
    g = torch.Generator().manual_seed(1)
    unbatched = kind == "unbatched"
    kdim, vdim = ctor.get("kdim") or E, ctor.get("vdim") or E
    length = L if kind != "self" else S

    def seq(n_steps: int, dim: int) -> torch.Tensor:
        if unbatched:
            return torch.randn(n_steps, dim, dtype=dtype, generator=g)
        if ctor.get("batch_first"):
            return torch.randn(N, n_steps, dim, dtype=dtype, generator=g)
        return torch.randn(n_steps, N, dim, dtype=dtype, generator=g)

    if kind == "self":
        inputs: tuple = (seq(S, E),)
    elif kind == "kv":
        inputs = (seq(L, E), seq(S, kdim))
    else:
        inputs = (seq(length, E), seq(S, kdim), seq(S, vdim))
    kwargs = dict(fwd)
    for name in ("attn_mask", "key_padding_mask"):
        if name in kwargs:
            kwargs[name] = _mask(kwargs[name], name, length, unbatched, dtype, g)
    return layer, module, inputs, kwargs, kind


def _qkv(kind: str, args: tuple) -> tuple:
    if kind == "self":
        return (args[0], args[0], args[0])
    if kind == "kv":
        return (args[0], args[1], args[1])
    return args


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", MHA_CASES, ids=_id)
def test_multihead_attention_matches_torch(case: Any, dtype: torch.dtype) -> None:
    """attn_output, attn_weights and gradients w.r.t. every param and the inputs."""
    layer, module, inputs, kwargs, kind = _build(case, dtype)
    flat = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def fdl_fn(sd: dict, *args: torch.Tensor) -> Any:
        return layer.apply(fdl.nn.load_state_dict(sd), *_qkv(kind, args), **kwargs)

    def torch_fn(sd: dict, *args: torch.Tensor) -> Any:
        return torch.func.functional_call(module, sd, _qkv(kind, args), kwargs)

    assert_parity(fdl_fn, torch_fn, flat, *inputs, grad_atol=_grad_atol(dtype))


@pytest.mark.parametrize("case", MHA_CASES[::4], ids=_id)
def test_init_keys_order_and_distributions(case: Any) -> None:
    layer, module, *_ = _build(case, torch.float64)
    params = layer.init(fdl.random.key(0))
    sd = fdl.nn.state_dict(params)
    assert list(sd) == list(module.state_dict())
    for k, v in module.state_dict().items():
        assert sd[k].shape == v.shape and sd[k].dtype == v.dtype, k
        if k.endswith("bias") and "bias_" not in k:
            assert not sd[k].any(), k  # in_proj_bias, out_proj.bias: zeros
        elif k.endswith("proj_weight"):
            fan_in, fan_out = v.shape[1], v.shape[0]
            bound = (6 / (fan_in + fan_out)) ** 0.5  # Xavier-uniform
            assert float(sd[k].abs().max()) <= bound
            assert float(sd[k].abs().max()) > 0.5 * bound


def test_load_torch_state_dict_same_outputs() -> None:
    torch.manual_seed(3)
    module = torch.nn.MultiheadAttention(E, HEADS, kdim=3, vdim=5, add_bias_kv=True).eval()
    layer = fdl.nn.MultiheadAttention(E, HEADS, kdim=3, vdim=5, add_bias_kv=True)
    params = fdl.nn.load_state_dict(module.state_dict(), layer)
    q, k, v = torch.randn(L, N, E), torch.randn(S, N, 3), torch.randn(S, N, 5)
    with torch.no_grad():
        assert_trees_close(layer.apply(params, q, k, v), module(q, k, v))


def test_attention_key_is_positional_and_key_keyword_is_the_rng_key() -> None:
    layer = fdl.nn.MultiheadAttention(E, HEADS, dropout=0.5)
    params = layer.init(fdl.random.key(0))
    x = torch.randn(L, N, E)
    a, _ = layer.apply(params, x, x, x, key=fdl.random.key(1), train=True)
    b, _ = layer.apply(params, x, x, value=x, key=fdl.random.key(1), train=True)
    assert_trees_close(a, b)
    with pytest.raises(TypeError):
        layer.apply(params, x, key=x, value=x)  # the attention keys cannot go by name


# -------------------------------------------------------------------------------- dropout and vmap


def _dropout_case() -> tuple[Any, Any, torch.Tensor]:
    layer = fdl.nn.MultiheadAttention(E, HEADS, dropout=0.5, dtype=torch.float64)
    x = torch.randn(L, N, E, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return layer, layer.init(fdl.random.key(0)), x


@pytest.mark.parametrize("need_weights", [True, False])
def test_dropout_deterministic_by_key_and_off_in_eval(need_weights: bool) -> None:
    layer, params, x = _dropout_case()
    k1, k2 = fdl.random.split(fdl.random.key(5))

    def run(**kw: Any) -> Any:
        return layer.apply(params, x, x, x, need_weights=need_weights, **kw)

    a = run(key=k1, train=True)
    assert_trees_close(run(key=k1, train=True), a)
    assert not torch.equal(a[0], run(key=k2, train=True)[0])
    assert not torch.equal(a[0], run()[0])
    assert_trees_close(run(key=k1), run())
    with pytest.raises(ValueError, match="key"):
        run(train=True)


def test_dropout_zero_in_train_equals_eval() -> None:
    layer = fdl.nn.MultiheadAttention(E, HEADS, dtype=torch.float64)
    params = layer.init(fdl.random.key(0))
    x = torch.randn(L, N, E, dtype=torch.float64)
    assert_trees_close(
        layer.apply(params, x, x, x, key=fdl.random.key(1), train=True),
        layer.apply(params, x, x, x),
    )


def test_vmap_over_keys_equals_loop() -> None:
    layer, params, x = _dropout_case()
    keys = fdl.random.split(fdl.random.key(6), 3)
    batched = torch.func.vmap(lambda k: layer.apply(params, x, x, x, key=k, train=True))(keys)
    looped = ft.stack([layer.apply(params, x, x, x, key=k, train=True) for k in keys])
    assert_trees_close(batched, looped)


@pytest.mark.parametrize("case", MHA_CASES[::3], ids=_id)
def test_vmap_over_ensemble_params_equals_loop(case: Any) -> None:
    layer, _, inputs, kwargs, kind = _build(case, torch.float64)
    members = [layer.init(k) for k in fdl.random.split(fdl.random.key(7), 3)]
    qkv = _qkv(kind, inputs)

    def run(p: Any) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in layer.apply(p, *qkv, **kwargs) if t is not None)

    batched = torch.func.vmap(run)(ft.stack(members))
    assert_trees_close(batched, ft.stack([run(p) for p in members]))


def test_errors() -> None:
    with pytest.raises(AssertionError, match="divisible"):
        fdl.nn.MultiheadAttention(6, 4)
    layer = fdl.nn.MultiheadAttention(E, HEADS)
    params = layer.init(fdl.random.key(0))
    x = torch.randn(L, N, E)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        layer.apply(params, x, x, x, is_causal=True)
    with pytest.raises(RuntimeError, match="2D attn_mask"):
        layer.apply(params, x, x, x, attn_mask=torch.zeros(3, 3, dtype=torch.bool))


def test_fully_masked_rows_as_torch() -> None:
    """A query that may see no key: NaN weights with need_weights (as torch), zeros without."""
    torch.manual_seed(0)
    module = torch.nn.MultiheadAttention(E, HEADS).eval()
    layer = fdl.nn.MultiheadAttention(E, HEADS)
    params = fdl.nn.load_state_dict(module.state_dict(), layer)
    x = torch.randn(L, N, E)
    mask = torch.zeros(L, L, dtype=torch.bool)
    mask[1] = True
    with torch.no_grad():
        for need in (True, False):
            got = layer.apply(params, x, x, x, attn_mask=mask, need_weights=need)
            assert_trees_close(got, module(x, x, x, attn_mask=mask, need_weights=need))


# -------------------------------------------------------------------- scaled_dot_product_attention

# (query (N, H, L, E) + key length S + value features, forward kwargs)
SDPA_CASES: list[tuple[tuple[int, ...], dict[str, Any]]] = [
    ((2, 3, 4, 5), {}),
    ((2, 3, 4, 5), dict(is_causal=True)),
    ((2, 3, 4, 5), dict(attn_mask="bool")),
    ((2, 3, 4, 5), dict(attn_mask="float")),
    ((2, 3, 4, 5), dict(attn_mask="bool", scale=0.3)),
    ((2, 3, 6, 5), dict(is_causal=True, scale=2.0)),
    ((4, 5), {}),
    ((2, 4, 4, 5), dict(enable_gqa=True)),
    ((2, 4, 4, 5), dict(enable_gqa=True, attn_mask="float")),
]
S_SDPA, EV = 7, 3


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SDPA_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_scaled_dot_product_attention_matches_torch(case: Any, dtype: torch.dtype) -> None:
    qshape, kw = case
    g = torch.Generator().manual_seed(4)
    *lead, length, e = qshape
    kv_lead = list(lead)
    if kw.get("enable_gqa"):
        kv_lead[-1] = lead[-1] // 2
    q = torch.randn(qshape, dtype=dtype, generator=g)
    k = torch.randn(*kv_lead, S_SDPA, e, dtype=dtype, generator=g)
    v = torch.randn(*kv_lead, S_SDPA, EV, dtype=dtype, generator=g)
    kw = dict(kw)
    if kw.get("attn_mask") is not None:
        keep = torch.rand(length, S_SDPA, generator=g) > 0.4
        keep[:, 0] = True
        if kw["attn_mask"] == "bool":
            kw["attn_mask"] = keep
        else:
            kw["attn_mask"] = torch.randn(keep.shape, dtype=dtype, generator=g).masked_fill(
                ~keep, float("-inf")
            )
    assert_parity(
        lambda q, k, v: fF.scaled_dot_product_attention(q, k, v, **kw),
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw),
        q, k, v, grad_atol=_grad_atol(dtype),
    )  # fmt: skip


def test_sdpa_dropout_by_key() -> None:
    q = k = v = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    k1, k2 = fdl.random.split(fdl.random.key(0))
    a = fF.scaled_dot_product_attention(q, k, v, dropout_p=0.5, key=k1)
    assert torch.equal(a, fF.scaled_dot_product_attention(q, k, v, dropout_p=0.5, key=k1))
    assert not torch.equal(a, fF.scaled_dot_product_attention(q, k, v, dropout_p=0.5, key=k2))
    assert_trees_close(
        fF.scaled_dot_product_attention(q, k, v, dropout_p=0.0, key=k1),
        fF.scaled_dot_product_attention(q, k, v),
    )
    with pytest.raises(ValueError, match="key"):
        fF.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    with pytest.raises(ValueError, match="not both"):
        fF.scaled_dot_product_attention(
            q, k, v, attn_mask=torch.ones(4, 4, dtype=torch.bool), is_causal=True
        )
