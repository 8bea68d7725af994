r"""Transformer layers and stacks, as ``torch.nn.Transformer*``.

``TransformerEncoderLayer`` (post-norm, ``norm_first=False``)::

    x = norm1(x + dropout1(self_attn(x, x, x, src_mask, src_key_padding_mask)))
    x = norm2(x + dropout2(linear2(dropout(activation(linear1(x))))))

and pre-norm (``norm_first=True``)::

    x = x + dropout1(self_attn(norm1(x), ...))
    x = x + dropout2(linear2(dropout(activation(linear1(norm2(x))))))

``TransformerDecoderLayer`` adds a cross-attention block
``multihead_attn(x, memory, memory, memory_mask, memory_key_padding_mask)``
with ``norm2``/``dropout2`` between the two (``norm3``/``dropout3`` then serve
the feed-forward block). Parameter names are torch's (``self_attn.in_proj_weight``,
``linear1.weight``, ``norm1.weight``, ``layers.0.…``, ``encoder.norm.weight``), so
torch checkpoints load as they are.

Dropout: every dropout site (the attention weights, ``dropout``, ``dropout1``,
...) gets its own key, split from ``key=``, only with ``train=True``.

Masks follow torch: bool ``True`` = not allowed / padding, float masks are added.
``is_causal`` is torch's hint that the mask is the causal one; where torch would
detect a causal mask by comparing its values (``is_causal=None``), fdl uses the
mask as given (same result, no data-dependent branch under ``torch.compile``).
fdl never builds nested tensors (``enable_nested_tensor`` is accepted and
ignored): outputs at padded positions are computed, where torch's eval fast
path may return zeros there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from fdl import random as _random
from fdl import tree as _tree
from fdl.nn import _functional_activations as _A
from fdl.nn import _functional_layers as _L
from fdl.nn import init as _init
from fdl.nn._base import Layer, Params
from fdl.nn._layer_utils import split_key
from fdl.nn.attention import MultiheadAttention
from fdl.nn.linear import Linear
from fdl.nn.normalization import LayerNorm

__all__ = [
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
]

Tensor = torch.Tensor
Activation = str | Callable[[Tensor], Tensor]


def _activation(activation: Activation) -> Callable[[Tensor], Tensor]:
    if activation == "relu":
        return _A.relu
    if activation == "gelu":
        return _A.gelu
    if isinstance(activation, str):
        raise RuntimeError(f"activation should be relu/gelu, not {activation}")
    if isinstance(activation, Layer):
        layer = activation
        return lambda x: layer.apply({}, x)
    if callable(activation):
        return activation
    raise TypeError(f"activation must be 'relu', 'gelu' or a callable, got {activation!r}")


def _dropout(x: Tensor, p: float, key: _random.Key | None, train: bool) -> Tensor:
    return _L.dropout(x, p, True, key=key) if train and p > 0 else x


def _keys(key: _random.Key | None, n: int, train: bool, p: float, name: str) -> list[Any]:
    if not (train and p > 0):
        return [None] * n
    if key is None:
        raise ValueError(f"{name}: dropout with train=True needs key=... (an fdl.random key)")
    return list(_random.split(key, n))


class _BlockLayer(Layer):
    """Fields (torch's arguments and defaults) and parts shared by the encoder and decoder."""

    d_model: int
    nhead: int
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: Activation = "relu"
    layer_norm_eps: float = 1e-5
    batch_first: bool = False
    norm_first: bool = False
    bias: bool = True
    device: Any = None
    dtype: Any = None

    def _build(self, attn_names: tuple[str, ...], norms: int) -> None:
        opts = {"device": self.device, "dtype": self.dtype}
        mha = MultiheadAttention(
            self.d_model, self.nhead, dropout=self.dropout, bias=self.bias,
            batch_first=self.batch_first, **opts,
        )  # fmt: skip
        children: dict[str, Layer] = {name: mha for name in attn_names}
        children["linear1"] = Linear(self.d_model, self.dim_feedforward, bias=self.bias, **opts)
        children["linear2"] = Linear(self.dim_feedforward, self.d_model, bias=self.bias, **opts)
        norm = LayerNorm(self.d_model, eps=self.layer_norm_eps, bias=self.bias, **opts)
        for i in range(1, norms + 1):
            children[f"norm{i}"] = norm
        object.__setattr__(self, "_layers", children)
        object.__setattr__(self, "_act", _activation(self.activation))

    def init(self, key: _random.Key) -> Params:
        """Each child's own init: ``MultiheadAttention``'s, ``Linear``'s, ``LayerNorm``'s."""
        layers: dict[str, Layer] = self.__dict__["_layers"]
        keys = split_key(key, len(layers))
        return {name: layer.init(k) for k, (name, layer) in zip(keys, layers.items(), strict=True)}

    def _ff(self, params: Params, x: Tensor, k1: Any, k2: Any, train: bool) -> Tensor:
        """``dropout_out(linear2(dropout(activation(linear1(x)))))``."""
        h = _L.linear(x, params["linear1"]["weight"], params["linear1"].get("bias"))
        h = _dropout(self.__dict__["_act"](h), self.dropout, k1, train)
        h = _L.linear(h, params["linear2"]["weight"], params["linear2"].get("bias"))
        return _dropout(h, self.dropout, k2, train)

    def _norm(self, params: Params, name: str, x: Tensor) -> Tensor:
        p = params.get(name, {})
        return _A.layer_norm(
            x, (self.d_model,), p.get("weight"), p.get("bias"), self.layer_norm_eps
        )

    def _attn(
        self,
        params: Params,
        name: str,
        x: Tensor,
        mem: Tensor,
        mask: Tensor | None,
        kpm: Tensor | None,
        is_causal: bool,
        k_attn: Any,
        k_out: Any,
        train: bool,
    ) -> Tensor:
        mha: MultiheadAttention = self.__dict__["_layers"][name]
        out, _ = mha.apply(
            params[name], x, mem, mem, attn_mask=mask, key_padding_mask=kpm,
            need_weights=False, is_causal=is_causal, key=k_attn, train=train,
        )  # fmt: skip
        return _dropout(out, self.dropout, k_out, train)


def _check_block_args(layer: _BlockLayer) -> None:
    name = type(layer).__name__
    if not 0.0 <= layer.dropout <= 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1], got {layer.dropout}")
    if layer.d_model % layer.nhead != 0:
        raise AssertionError("embed_dim must be divisible by num_heads")


class TransformerEncoderLayer(_BlockLayer):
    """Self-attention and feed-forward block, as ``torch.nn.TransformerEncoderLayer``.

    See the module docstring for the formulas (post-norm or ``norm_first``).

    Params: ``self_attn`` (a :class:`MultiheadAttention`), ``linear1``
    ``(dim_feedforward, d_model)``, ``linear2``, ``norm1``, ``norm2``.

    ``apply(params, src, src_mask=None, src_key_padding_mask=None, is_causal=False,
    *, key=None, train=False)``: ``src`` ``(S, N, E)`` (``(N, S, E)`` with
    ``batch_first``, ``(S, E)`` unbatched) -> the same shape.

    Args:
        d_model: features ``E``.
        nhead: attention heads.
        dim_feedforward: hidden features of the feed-forward block.
        dropout: dropout probability at every dropout site.
        activation: ``"relu"``, ``"gelu"``, a function of a tensor or a
            parameter-free fdl layer.
        layer_norm_eps: LayerNorm's ``eps``.
        batch_first: ``(N, S, E)`` layout.
        norm_first: pre-norm instead of post-norm.
        bias: biases in the linear maps, the attention and the LayerNorms.
        device: device of the initialised params.
        dtype: dtype of the initialised params.

    Example:
        >>> import fdl, torch
        >>> layer = fdl.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
        >>> params = layer.init(fdl.random.key(0))
        >>> layer.apply(params, torch.randn(3, 5, 8)).shape
        torch.Size([3, 5, 8])
    """

    def __post_init__(self) -> None:
        _check_block_args(self)
        self._build(("self_attn",), 2)

    def apply(
        self,
        params: Params,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        *,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> Tensor:
        """One encoder block over ``src``; returns ``src``'s shape."""
        ka, k1, k2, k3 = _keys(key, 4, train, self.dropout, "TransformerEncoderLayer")
        x = src

        def sa(y: Tensor) -> Tensor:
            return self._attn(
                params, "self_attn", y, y, src_mask, src_key_padding_mask, is_causal, ka, k1, train
            )

        if self.norm_first:
            x = x + sa(self._norm(params, "norm1", x))
            x = x + self._ff(params, self._norm(params, "norm2", x), k2, k3, train)
        else:
            x = self._norm(params, "norm1", x + sa(x))
            x = self._norm(params, "norm2", x + self._ff(params, x, k2, k3, train))
        return x


class TransformerDecoderLayer(_BlockLayer):
    """Self-attention, cross-attention and feed-forward block, as torch's.

    See the module docstring; params ``self_attn``, ``multihead_attn``,
    ``linear1``, ``linear2``, ``norm1``, ``norm2``, ``norm3``. Arguments as
    :class:`TransformerEncoderLayer`.

    ``apply(params, tgt, memory, tgt_mask=None, memory_mask=None,
    tgt_key_padding_mask=None, memory_key_padding_mask=None, tgt_is_causal=False,
    memory_is_causal=False, *, key=None, train=False)`` -> ``tgt``'s shape.

    Example:
        >>> import fdl, torch
        >>> layer = fdl.nn.TransformerDecoderLayer(8, 2, dim_feedforward=16)
        >>> params = layer.init(fdl.random.key(0))
        >>> layer.apply(params, torch.randn(4, 3, 8), torch.randn(6, 3, 8)).shape
        torch.Size([4, 3, 8])
    """

    def __post_init__(self) -> None:
        _check_block_args(self)
        self._build(("self_attn", "multihead_attn"), 3)

    def apply(
        self,
        params: Params,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
        *,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> Tensor:
        """One decoder block over ``tgt`` attending to ``memory``; returns ``tgt``'s shape."""
        ks = _keys(key, 6, train, self.dropout, "TransformerDecoderLayer")
        x = tgt

        def sa(y: Tensor) -> Tensor:
            return self._attn(
                params, "self_attn", y, y, tgt_mask, tgt_key_padding_mask, tgt_is_causal,
                ks[0], ks[1], train,
            )  # fmt: skip

        def ca(y: Tensor) -> Tensor:
            return self._attn(
                params, "multihead_attn", y, memory, memory_mask, memory_key_padding_mask,
                memory_is_causal, ks[2], ks[3], train,
            )  # fmt: skip

        if self.norm_first:
            x = x + sa(self._norm(params, "norm1", x))
            x = x + ca(self._norm(params, "norm2", x))
            x = x + self._ff(params, self._norm(params, "norm3", x), ks[4], ks[5], train)
        else:
            x = self._norm(params, "norm1", x + sa(x))
            x = self._norm(params, "norm2", x + ca(x))
            x = self._norm(params, "norm3", x + self._ff(params, x, ks[4], ks[5], train))
        return x


class _Stack(Layer):
    """``num_layers`` copies of one layer, then an optional final norm, as torch's stacks."""

    _repeated: ClassVar[str] = ""  # the field holding the repeated layer
    if TYPE_CHECKING:  # fields of each stack, in torch's argument order

        @property
        def num_layers(self) -> int: ...

        @property
        def norm(self) -> Layer | None: ...

    def _layer(self) -> Layer:
        return getattr(self, self._repeated)

    def init(self, key: _random.Key) -> Params:
        """One draw of the layer's ``init`` copied to every layer, and the norm's params."""
        # torch deep-copies one initialised layer: every copy starts from the same weights
        k_layer, k_norm = split_key(key)
        first = self._layer().init(k_layer)
        params: Params = {
            "layers": {str(i): _tree.map(torch.clone, first) for i in range(self.num_layers)}
        }
        if self.norm is not None:
            p = self.norm.init(k_norm)
            if p:
                params["norm"] = p
        return params

    def _run(
        self, params: Params, x: Tensor, key: _random.Key | None, train: bool, *args: Any, **kw: Any
    ) -> Tensor:
        """Layer ``i`` (with ``split(key, num_layers)[i]``) on ``x`` in order, then the norm."""
        keys = _random.split(key, self.num_layers) if key is not None else None
        for i in range(self.num_layers):
            k = None if keys is None else keys[i]
            x = self._layer().apply(params["layers"][str(i)], x, *args, key=k, train=train, **kw)
        return x if self.norm is None else self.norm.apply(params.get("norm", {}), x)


class TransformerEncoder(_Stack):
    """A stack of ``num_layers`` encoder layers and an optional final norm, as torch's.

    Params: ``layers.0``, ``layers.1``, ... (each ``encoder_layer``'s params) and
    ``norm`` when given. As torch (which deep-copies the layer), every layer
    starts from the same initial params.

    ``apply(params, src, mask=None, src_key_padding_mask=None, is_causal=None, *,
    key=None, train=False)``; layer ``i`` gets ``fdl.random.split(key,
    num_layers)[i]``.

    Args:
        encoder_layer: a :class:`TransformerEncoderLayer`.
        num_layers: how many copies.
        norm: a final layer (e.g. ``LayerNorm(d_model)``) or ``None``.
        enable_nested_tensor: accepted for compatibility; fdl never builds nested tensors.
        mask_check: accepted for compatibility.

    Example:
        >>> import fdl, torch
        >>> layer = fdl.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16)
        >>> enc = fdl.nn.TransformerEncoder(layer, 2, norm=fdl.nn.LayerNorm(8))
        >>> params = enc.init(fdl.random.key(0))
        >>> sorted(params), sorted(params["layers"])
        (['layers', 'norm'], ['0', '1'])
        >>> enc.apply(params, torch.randn(5, 3, 8)).shape
        torch.Size([5, 3, 8])
    """

    _repeated: ClassVar[str] = "encoder_layer"

    encoder_layer: Layer
    num_layers: int
    norm: Layer | None = None
    enable_nested_tensor: bool = True
    mask_check: bool = True

    def apply(
        self,
        params: Params,
        src: Tensor,
        mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
        *,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> Tensor:
        """Run the layers in order, then the norm."""
        return self._run(
            params, src, key, train, src_mask=mask,
            src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal),
        )  # fmt: skip


class TransformerDecoder(_Stack):
    """A stack of ``num_layers`` decoder layers and an optional final norm, as torch's.

    Params ``layers.0``, ... and ``norm``, as :class:`TransformerEncoder`.

    ``apply(params, tgt, memory, tgt_mask=None, memory_mask=None,
    tgt_key_padding_mask=None, memory_key_padding_mask=None, tgt_is_causal=None,
    memory_is_causal=False, *, key=None, train=False)``.

    Example:
        >>> import fdl, torch
        >>> layer = fdl.nn.TransformerDecoderLayer(8, 2, dim_feedforward=16)
        >>> dec = fdl.nn.TransformerDecoder(layer, 2)
        >>> dec.apply(dec.init(fdl.random.key(0)), torch.randn(4, 3, 8), torch.randn(6, 3, 8)).shape
        torch.Size([4, 3, 8])
    """

    _repeated: ClassVar[str] = "decoder_layer"

    decoder_layer: Layer
    num_layers: int
    norm: Layer | None = None

    def apply(
        self,
        params: Params,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
        *,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> Tensor:
        """Run the layers in order over ``tgt`` with ``memory``, then the norm."""
        return self._run(
            params, tgt, key, train, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
            tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal,
        )  # fmt: skip


class Transformer(Layer):
    """Encoder-decoder Transformer, as ``torch.nn.Transformer``.

    ``encoder`` = ``TransformerEncoder(TransformerEncoderLayer(...),
    num_encoder_layers, LayerNorm(d_model))``, ``decoder`` likewise; params
    ``encoder.layers.0.…``, ``encoder.norm``, ``decoder.…``. As torch, ``init``
    redraws every parameter with more than one dimension from Xavier-uniform
    (independently per layer); biases and norms keep their layers' init.

    ``apply(params, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None,
    src_key_padding_mask=None, tgt_key_padding_mask=None,
    memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
    memory_is_causal=False, *, key=None, train=False)``: ``memory =
    encoder(src, ...)``, returns ``decoder(tgt, memory, ...)`` (``tgt``'s shape);
    the encoder gets ``split(key)[0]``, the decoder ``split(key)[1]``.

    Args:
        d_model: features ``E``.
        nhead: attention heads.
        num_encoder_layers: encoder layers.
        num_decoder_layers: decoder layers.
        dim_feedforward: hidden features of the feed-forward blocks.
        dropout: dropout probability.
        activation: ``"relu"``, ``"gelu"`` or a callable.
        custom_encoder: an fdl layer used instead of the encoder stack.
        custom_decoder: an fdl layer used instead of the decoder stack.
        layer_norm_eps: LayerNorm's ``eps``.
        batch_first: ``(N, S, E)`` layout.
        norm_first: pre-norm layers.
        bias: biases in linear maps, attention and norms.
        device: device of the initialised params.
        dtype: dtype of the initialised params.

    Example:
        >>> import fdl, torch
        >>> model = fdl.nn.Transformer(8, 2, 1, 1, dim_feedforward=16, batch_first=True)
        >>> params = model.init(fdl.random.key(0))
        >>> model.apply(params, torch.randn(3, 6, 8), torch.randn(3, 4, 8)).shape
        torch.Size([3, 4, 8])
    """

    d_model: int = 512
    nhead: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: Activation = "relu"
    custom_encoder: Layer | None = None
    custom_decoder: Layer | None = None
    layer_norm_eps: float = 1e-5
    batch_first: bool = False
    norm_first: bool = False
    bias: bool = True
    device: Any = None
    dtype: Any = None

    def __post_init__(self) -> None:
        opts = {"device": self.device, "dtype": self.dtype}
        shared = dict(
            dim_feedforward=self.dim_feedforward, dropout=self.dropout,
            activation=self.activation, layer_norm_eps=self.layer_norm_eps,
            batch_first=self.batch_first, norm_first=self.norm_first, bias=self.bias, **opts,
        )  # fmt: skip
        norm = LayerNorm(self.d_model, eps=self.layer_norm_eps, bias=self.bias, **opts)
        encoder = self.custom_encoder or TransformerEncoder(
            TransformerEncoderLayer(self.d_model, self.nhead, **shared),
            self.num_encoder_layers, norm,
        )  # fmt: skip
        decoder = self.custom_decoder or TransformerDecoder(
            TransformerDecoderLayer(self.d_model, self.nhead, **shared),
            self.num_decoder_layers, norm,
        )  # fmt: skip
        object.__setattr__(self, "encoder", encoder)
        object.__setattr__(self, "decoder", decoder)

    def init(self, key: _random.Key) -> Params:
        """The stacks' init, then Xavier-uniform for every parameter with ``dim > 1``."""
        k_enc, k_dec, k_xavier = split_key(key, 3)
        params = {"encoder": self.encoder.init(k_enc), "decoder": self.decoder.init(k_dec)}
        leaves = _tree.leaves(params)
        keys = split_key(k_xavier, max(len(leaves), 1))
        redrawn = [
            _init.xavier_uniform(k, tuple(p.shape), dtype=p.dtype, device=p.device)
            if p.dim() > 1
            else p
            for k, p in zip(keys, leaves, strict=False)
        ]
        return _tree.unflatten(_tree.structure(params), redrawn)

    @staticmethod
    def generate_square_subsequent_mask(
        sz: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Float ``(sz, sz)`` causal mask: ``-inf`` above the diagonal, ``0`` elsewhere.

        Example:
            >>> Transformer.generate_square_subsequent_mask(2)
            tensor([[0., -inf],
                    [0., 0.]])
        """
        dtype = torch.get_default_dtype() if dtype is None else dtype
        full = torch.full((sz, sz), float("-inf"), dtype=dtype, device=device)
        return torch.triu(full, diagonal=1)

    def apply(
        self,
        params: Params,
        src: Tensor,
        tgt: Tensor,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        src_is_causal: bool | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
        *,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> Tensor:
        """``decoder(tgt, encoder(src))``; returns ``tgt``'s shape."""
        batched = src.dim() == 3
        if batched and not self.batch_first and src.shape[1] != tgt.shape[1]:
            raise RuntimeError("the batch number of src and tgt must be equal")
        if batched and self.batch_first and src.shape[0] != tgt.shape[0]:
            raise RuntimeError("the batch number of src and tgt must be equal")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise RuntimeError("the feature number of src and tgt must be equal to d_model")
        k_enc, k_dec = (None, None) if key is None else _random.split(key)
        encoder: Layer = self.__dict__["encoder"]
        decoder: Layer = self.__dict__["decoder"]
        memory = encoder.apply(
            params["encoder"], src, mask=src_mask, src_key_padding_mask=src_key_padding_mask,
            is_causal=src_is_causal, key=k_enc, train=train,
        )  # fmt: skip
        return decoder.apply(
            params["decoder"], tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
            memory_is_causal=memory_is_causal, key=k_dec, train=train,
        )  # fmt: skip
