"""Transformer layers and stacks vs torch (values and gradients w.r.t. every param and the
inputs), init, dropout keys, vmap; a compiled Transformer-classifier train step that never
recompiles, and its per-sample gradients against the per-example loop.

Each configuration is one registry line: (family, constructor kwargs, forward kwargs,
unbatched). Masks are named by kind and built in ``_masks``.
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

pytestmark = [
    pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning"),
    pytest.mark.filterwarnings("ignore:Support for mismatched:UserWarning"),
]
DTYPES = [torch.float64, torch.float32]
E, HEADS, FF, S, T, N = 8, 2, 12, 5, 4, 2

# activations given as callables: (fdl function, torch function)
ACTIVATIONS = {"silu_fn": (fF.silu, F.silu), "gelu_fn": (fF.gelu, F.gelu)}

TR_CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("encoder_layer", {}, {}, False),
    ("encoder_layer", dict(norm_first=True), dict(src_mask="bool"), False),
    ("encoder_layer", dict(activation="gelu"), dict(src_mask="float"), False),
    (
        "encoder_layer",
        dict(activation="silu_fn", layer_norm_eps=1e-3),
        dict(src_key_padding_mask="bool"),
        False,
    ),
    (
        "encoder_layer",
        dict(batch_first=True, bias=False),
        dict(src_key_padding_mask="bool", src_mask="float"),
        False,
    ),
    (
        "encoder_layer",
        dict(norm_first=True, batch_first=True),
        dict(src_mask="causal", is_causal=True),
        False,
    ),
    ("encoder_layer", {}, dict(src_mask="bool"), True),
    ("decoder_layer", {}, {}, False),
    ("decoder_layer", dict(norm_first=True), dict(tgt_mask="causal", tgt_is_causal=True), False),
    (
        "decoder_layer",
        dict(activation="gelu_fn", batch_first=True),
        dict(memory_key_padding_mask="bool", tgt_key_padding_mask="bool"),
        False,
    ),
    ("decoder_layer", dict(bias=False), dict(memory_mask="float", tgt_mask="bool"), False),
    ("decoder_layer", dict(norm_first=True), dict(tgt_mask="causal", memory_mask="bool"), True),
    ("encoder", dict(num_layers=2, norm=True), dict(mask="bool"), False),
    (
        "encoder",
        dict(num_layers=3, norm_first=True, batch_first=True),
        dict(src_key_padding_mask="bool"),
        False,
    ),
    ("encoder", dict(num_layers=2, norm=True), dict(mask="causal", is_causal=True), True),
    (
        "decoder",
        dict(num_layers=2, norm=True),
        dict(tgt_mask="causal", memory_key_padding_mask="bool"),
        False,
    ),
    (
        "decoder",
        dict(num_layers=2, batch_first=True, activation="gelu"),
        dict(tgt_mask="causal", tgt_is_causal=True),
        False,
    ),
    ("transformer", {}, {}, False),
    (
        "transformer",
        dict(batch_first=True, norm_first=True),
        dict(tgt_mask="causal", src_key_padding_mask="bool", memory_key_padding_mask="bool"),
        False,
    ),
    (
        "transformer",
        dict(activation="gelu", bias=False),
        dict(src_mask="float", tgt_mask="causal", tgt_is_causal=True),
        False,
    ),
    ("transformer", {}, dict(memory_mask="bool"), True),
]


def _id(case: Any) -> str:
    fam, ctor, fwd, unb = case
    c = ",".join(f"{k}={v}" for k, v in ctor.items())
    return f"{fam}({c})-{','.join(f'{k}={v}' for k, v in fwd.items())}{'-unbatched' if unb else ''}"


def _layer_kwargs(ctor: dict[str, Any], side: int) -> dict[str, Any]:
    kw = {k: v for k, v in ctor.items() if k not in ("num_layers", "norm")}
    if kw.get("activation") in ACTIVATIONS:
        kw["activation"] = ACTIVATIONS[kw["activation"]][side]
    return kw


def _models(fam: str, ctor: dict[str, Any], dtype: torch.dtype) -> tuple[Any, torch.nn.Module]:
    """(fdl layer, torch module) for one registry entry; torch modules in eval mode."""
    torch.manual_seed(0)
    fk, tk = _layer_kwargs(ctor, 0), _layer_kwargs(ctor, 1)
    n, norm = ctor.get("num_layers", 1), ctor.get("norm", False)
    if fam == "transformer":
        sizes = dict(num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=FF)
        layer = fdl.nn.Transformer(E, HEADS, **sizes, dtype=dtype, **fk)
        module = torch.nn.Transformer(E, HEADS, **sizes, dtype=dtype, **tk)
        return layer, module.eval()
    enc = fam.startswith("encoder")
    f_cls = fdl.nn.TransformerEncoderLayer if enc else fdl.nn.TransformerDecoderLayer
    t_cls = torch.nn.TransformerEncoderLayer if enc else torch.nn.TransformerDecoderLayer
    f_layer = f_cls(E, HEADS, FF, dtype=dtype, **fk)
    t_layer = t_cls(E, HEADS, FF, dtype=dtype, **tk)
    if fam.endswith("_layer"):
        return f_layer, t_layer.eval()
    f_norm = fdl.nn.LayerNorm(E, dtype=dtype) if norm else None
    t_norm = torch.nn.LayerNorm(E, dtype=dtype) if norm else None
    if enc:
        module: torch.nn.Module = torch.nn.TransformerEncoder(
            t_layer, n, t_norm, enable_nested_tensor=False
        )
        return fdl.nn.TransformerEncoder(f_layer, n, f_norm), module.eval()
    return fdl.nn.TransformerDecoder(f_layer, n, f_norm), torch.nn.TransformerDecoder(
        t_layer, n, t_norm
    ).eval()


def _inputs(case: Any, dtype: torch.dtype) -> tuple[tuple[torch.Tensor, ...], dict[str, Any]]:
    fam, ctor, fwd, unbatched = case
    g = torch.Generator().manual_seed(1)

    def seq(length: int) -> torch.Tensor:
        shape = (
            (length, E)
            if unbatched
            else ((N, length, E) if ctor.get("batch_first") else (length, N, E))
        )
        return torch.randn(shape, dtype=dtype, generator=g)

    if fam.startswith("encoder"):
        tensors: tuple[torch.Tensor, ...] = (seq(S),)
    elif fam.startswith("decoder"):
        tensors = (seq(T), seq(S))
    else:
        tensors = (seq(S), seq(T))
    kwargs: dict[str, Any] = {}
    for name, kind in fwd.items():
        if not isinstance(kind, str):
            kwargs[name] = kind
            continue
        self_attn = name in ("mask", "src_mask", "tgt_mask")
        length = T if name.startswith("tgt") or name.startswith("memory") else S
        source = length if self_attn else S
        if name.endswith("key_padding_mask"):
            width = T if name.startswith("tgt") else S
            masked = torch.zeros(1 if unbatched else N, width, dtype=torch.bool)
            masked[0, -1] = True
            kwargs[name] = masked[0] if unbatched else masked
        elif kind == "causal":
            kwargs[name] = torch.ones(length, source, dtype=torch.bool).tril().logical_not()
        else:
            masked = torch.rand(length, source, generator=g) < 0.3
            masked[:, 0] = False
            kwargs[name] = (
                masked
                if kind == "bool"
                else torch.randn(masked.shape, dtype=dtype, generator=g).masked_fill(
                    masked, float("-inf")
                )
            )
    return tensors, kwargs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", TR_CASES, ids=_id)
def test_matches_torch(case: Any, dtype: torch.dtype) -> None:
    """Outputs and gradients w.r.t. every parameter and the inputs (eval: no dropout)."""
    layer, module = _models(case[0], case[1], dtype)
    tensors, kwargs = _inputs(case, dtype)
    flat = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def fdl_fn(sd: dict, *args: torch.Tensor) -> Any:
        return layer.apply(fdl.nn.load_state_dict(sd), *args, **kwargs)

    def torch_fn(sd: dict, *args: torch.Tensor) -> Any:
        return torch.func.functional_call(module, sd, args, kwargs)

    # float32 gradients are sums of O(1) terms over every position and layer: where they cancel
    # to a small entry, the error is ~1e-7 * sum |terms|, so the absolute tolerance is 1e-5
    grad_atol = 1e-5 if dtype == torch.float32 else None
    assert_parity(fdl_fn, torch_fn, flat, *tensors, grad_atol=grad_atol)


@pytest.mark.parametrize("case", TR_CASES[::3], ids=_id)
def test_init_keys_order_shapes(case: Any) -> None:
    layer, module = _models(case[0], case[1], torch.float64)
    params = layer.init(fdl.random.key(0))
    sd = fdl.nn.state_dict(params)
    assert list(sd) == list(module.state_dict())
    for k, v in module.state_dict().items():
        assert sd[k].shape == v.shape and sd[k].dtype == v.dtype, k


def test_stacks_start_from_identical_layers_and_transformer_redraws_xavier() -> None:
    """As torch: TransformerEncoder deep-copies one layer; Transformer redraws dim > 1 params."""
    layer = fdl.nn.TransformerEncoderLayer(E, HEADS, FF)
    enc = fdl.nn.TransformerEncoder(layer, 2).init(fdl.random.key(0))
    assert_trees_close(enc["layers"]["0"], enc["layers"]["1"])
    model = fdl.nn.Transformer(E, HEADS, 2, 1, FF).init(fdl.random.key(0))
    w0 = model["encoder"]["layers"]["0"]["linear1"]["weight"]
    w1 = model["encoder"]["layers"]["1"]["linear1"]["weight"]
    assert not torch.equal(w0, w1)
    assert float(w0.abs().max()) <= (6 / (E + FF)) ** 0.5


def test_load_torch_state_dict_same_outputs() -> None:
    torch.manual_seed(2)
    module = torch.nn.Transformer(E, HEADS, 2, 2, FF, batch_first=True).eval()
    layer = fdl.nn.Transformer(E, HEADS, 2, 2, FF, batch_first=True)
    params = fdl.nn.load_state_dict(module.state_dict(), layer)
    src, tgt = torch.randn(N, S, E), torch.randn(N, T, E)
    mask = fdl.nn.Transformer.generate_square_subsequent_mask(T)
    assert torch.equal(mask, torch.nn.Transformer.generate_square_subsequent_mask(T))
    with torch.no_grad():
        assert_trees_close(
            layer.apply(params, src, tgt, tgt_mask=mask), module(src, tgt, tgt_mask=mask)
        )


# -------------------------------------------------------------------------------- dropout and vmap


def _dropout_encoder() -> tuple[Any, Any, torch.Tensor]:
    layer = fdl.nn.TransformerEncoder(
        fdl.nn.TransformerEncoderLayer(E, HEADS, FF, dropout=0.3, dtype=torch.float64), 2
    )
    x = torch.randn(S, N, E, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return layer, layer.init(fdl.random.key(0)), x


def test_dropout_deterministic_by_key_and_off_in_eval() -> None:
    layer, params, x = _dropout_encoder()
    k1, k2 = fdl.random.split(fdl.random.key(1))
    a = layer.apply(params, x, key=k1, train=True)
    assert torch.equal(a, layer.apply(params, x, key=k1, train=True))
    assert not torch.equal(a, layer.apply(params, x, key=k2, train=True))
    assert not torch.equal(a, layer.apply(params, x))
    assert_trees_close(layer.apply(params, x, key=k1), layer.apply(params, x))
    with pytest.raises(ValueError, match="key"):
        layer.apply(params, x, train=True)


def test_dropout_zero_in_train_equals_eval() -> None:
    model = fdl.nn.Transformer(E, HEADS, 1, 1, FF, dropout=0.0, dtype=torch.float64)
    params = model.init(fdl.random.key(0))
    src, tgt = torch.randn(S, N, E, dtype=torch.float64), torch.randn(T, N, E, dtype=torch.float64)
    assert_trees_close(
        model.apply(params, src, tgt, key=fdl.random.key(1), train=True),
        model.apply(params, src, tgt),
    )


def test_vmap_over_keys_equals_loop() -> None:
    layer, params, x = _dropout_encoder()
    keys = fdl.random.split(fdl.random.key(4), 3)
    batched = torch.func.vmap(lambda k: layer.apply(params, x, key=k, train=True))(keys)
    assert_trees_close(
        batched, torch.stack([layer.apply(params, x, key=k, train=True) for k in keys])
    )


@pytest.mark.parametrize("case", TR_CASES[::2], ids=_id)
def test_vmap_over_ensemble_params_equals_loop(case: Any) -> None:
    layer, _ = _models(case[0], case[1], torch.float64)
    tensors, kwargs = _inputs(case, torch.float64)
    members = [layer.init(k) for k in fdl.random.split(fdl.random.key(5), 2)]
    batched = torch.func.vmap(lambda p: layer.apply(p, *tensors, **kwargs))(ft.stack(members))
    assert_trees_close(batched, torch.stack([layer.apply(p, *tensors, **kwargs) for p in members]))


# --------------------------------------------------------------- a classifier: compile, per-sample


VOCAB, CLASSES = 11, 3


def _classifier(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    emb = fdl.nn.Embedding(VOCAB, E, dtype=dtype)
    enc = fdl.nn.TransformerEncoder(
        fdl.nn.TransformerEncoderLayer(E, HEADS, FF, dropout=0.1, batch_first=True, dtype=dtype), 1
    )
    head = fdl.nn.Linear(E, CLASSES, dtype=dtype)

    def init(key: Any) -> Any:
        k = fdl.random.split(key, 3)
        return {"emb": emb.init(k[0]), "enc": enc.init(k[1]), "head": head.init(k[2])}

    def logits(
        params: Any, tokens: torch.Tensor, key: Any = None, train: bool = False
    ) -> torch.Tensor:
        h = enc.apply(params["enc"], emb.apply(params["emb"], tokens), key=key, train=train)
        return head.apply(params["head"], h.mean(dim=1))  # (N, CLASSES)

    return init, logits


def test_compiled_transformer_classifier_step_never_recompiles() -> None:
    init, logits = _classifier()

    def loss_fn(params: Any, tokens: torch.Tensor, labels: torch.Tensor, key: Any) -> torch.Tensor:
        return fdl.losses.cross_entropy(logits(params, tokens, key, True), labels)

    opt = fdl.optim.sgd(lr=0.1)  # (adam's first step is sign(grad): noise for zero grads)
    params = init(fdl.random.key(0))
    state = opt.init(params)
    step = fdl.train.make_train_step(loss_fn, opt)
    eager = fdl.train.make_train_step(loss_fn, opt, compile=False)
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randint(0, VOCAB, (4, 6), generator=g), torch.randint(0, CLASSES, (4,), generator=g))
        for _ in range(3)
    ]
    keys = fdl.random.split(fdl.random.key(1), 3)
    p_c, s_c, loss_c = step(params, state, *batches[0], keys[0])
    p_e, s_e, loss_e = eager(params, state, *batches[0], keys[0])
    assert_trees_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert_trees_close(p_c, p_e, rtol=1e-4, atol=1e-5)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for (x, y), k in zip(batches[1:], keys[1:], strict=True):
            p_c, s_c, loss_c = step(p_c, s_c, x, y, k)
    assert torch.isfinite(loss_c)


def test_per_sample_grads_of_transformer_classifier_equal_loop() -> None:
    init, logits = _classifier(torch.float64)
    params = init(fdl.random.key(0))
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (3, 5), generator=g)
    labels = torch.randint(0, CLASSES, (3,), generator=g)

    def loss_fn(params: Any, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return fdl.losses.cross_entropy(logits(params, tokens), labels)

    grads = fdl.per_sample_grads(loss_fn)(params, tokens, labels)
    norms = fdl.per_sample_grad_norms(loss_fn)(params, tokens, labels)
    loop = [
        torch.func.grad(loss_fn)(params, tokens[i : i + 1], labels[i : i + 1]) for i in range(3)
    ]
    assert_trees_close(grads, ft.stack(loop))
    assert_trees_close(norms, torch.stack([ft.global_norm(gr) for gr in loop]))
