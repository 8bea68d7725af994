r"""``MultiheadAttention``, as ``torch.nn.MultiheadAttention``, written out from the formula.

With ``h`` heads of size ``d = embed_dim / h``:

.. math::

    Q = q W_q^\top + b_q,\quad K = k W_k^\top + b_k,\quad V = v W_v^\top + b_v,\\
    \text{head}_j = \operatorname{softmax}\!\left(Q_j K_j^\top / \sqrt{d} + B\right) V_j,\quad
    \text{out} = [\text{head}_1, \dots, \text{head}_h]\, W_o^\top + b_o

where ``B`` is the additive mask (``-inf`` at masked-out positions, from
``attn_mask``, ``key_padding_mask`` and ``is_causal``), see
:mod:`fdl.nn._functional_attention`.

**Two meanings of "key".** torch's ``forward(query, key, value, ...)`` names the
attention keys ``key``; in fdl the keyword ``key=`` is always the RNG key (for
dropout), so the attention keys are passed **positionally**::

    out, weights = mha.apply(params, query, keys, values, key=rng, train=True)

(``query`` and the attention keys are positional-only; ``value`` and every mask
and flag can be given by name, as in torch.)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fdl import random as _random
from fdl.nn import _functional_activations as _A
from fdl.nn import _functional_attention as _FA
from fdl.nn import _functional_layers as _L
from fdl.nn import init as _init
from fdl.nn._base import Layer, Params
from fdl.nn._layer_utils import check_params_fast, split_key

__all__ = ["MultiheadAttention"]

Tensor = torch.Tensor


def _pad_last(bias: Tensor | None) -> Tensor | None:
    """Append one zero (= takes part) column to an additive mask."""
    if bias is None:
        return None
    return torch.cat([bias, bias.new_zeros(*bias.shape[:-1], 1)], dim=-1)


class MultiheadAttention(Layer):
    r"""Multi-head attention, as ``torch.nn.MultiheadAttention``.

    Params (torch's names): ``in_proj_weight`` ``(3E, E)`` when
    ``kdim == vdim == embed_dim``, else ``q_proj_weight`` ``(E, E)``,
    ``k_proj_weight`` ``(E, kdim)``, ``v_proj_weight`` ``(E, vdim)`` (all
    Xavier-uniform); ``in_proj_bias`` ``(3E,)`` (zeros, with ``bias``);
    ``bias_k``, ``bias_v`` ``(1, 1, E)`` (Xavier-normal, with ``add_bias_kv``);
    ``out_proj.weight`` ``(E, E)`` (``Linear``'s init), ``out_proj.bias`` (zeros).

    Forward (per head ``j``, ``d = E / num_heads``):
    ``A_j = softmax(Q_j K_j^T / sqrt(d) + B)``, ``head_j = dropout(A_j) V_j``,
    ``out = concat_j(head_j) W_o^T + b_o``. ``add_bias_kv`` appends
    ``bias_k``/``bias_v`` to the projected keys/values as one more source
    position; ``add_zero_attn`` appends a zero key/value per head.

    ``apply(params, query, key, value, /, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False, *, key=None,
    train=False)`` — the attention keys are the second positional argument; the
    keyword ``key=`` is the RNG key for dropout (see the module docstring).

    Shapes (``batch_first=False``): ``query`` ``(L, N, E)``, keys ``(S, N, kdim)``,
    values ``(S, N, vdim)`` (``batch_first``: ``(N, L, E)``, ...; unbatched: no
    ``N``); ``key_padding_mask`` ``(N, S)`` (bool ``True`` = ignore, or float
    added); ``attn_mask`` ``(L, S)`` or ``(N num_heads, L, S)`` (bool ``True`` = not
    allowed, or float added). Returns ``(attn_output, attn_weights)``:
    ``(L, N, E)`` and, with ``need_weights``, ``(N, L, S)`` averaged over heads or
    ``(N, num_heads, L, S)`` (else ``None``).

    Args:
        embed_dim: model dimension ``E``.
        num_heads: parallel heads (``E`` must be divisible by it).
        dropout: dropout on the attention weights (``train=True`` with ``key=``).
        bias: learn ``in_proj_bias`` and ``out_proj.bias``.
        add_bias_kv: learn ``bias_k``/``bias_v`` appended to keys/values.
        add_zero_attn: append a zero key and value.
        kdim: features of the keys (default ``E``).
        vdim: features of the values (default ``E``).
        batch_first: inputs and outputs are ``(N, L, E)``.
        device: device of the initialised params.
        dtype: dtype of the initialised params.

    Note:
        torch's ``is_causal`` is a hint that ``attn_mask`` is the causal mask: with
        it, and no ``key_padding_mask`` and ``need_weights=False``, torch (and fdl)
        use the causal mask instead of ``attn_mask``. Dropout masks come from
        ``key``, not the global RNG. Fully masked rows: NaN with
        ``need_weights=True``, zeros without, as torch.

    Example:
        >>> import fdl, torch
        >>> mha = fdl.nn.MultiheadAttention(8, 2, batch_first=True)
        >>> params = mha.init(fdl.random.key(0))
        >>> x = torch.randn(3, 5, 8)
        >>> out, w = mha.apply(params, x, x, x)
        >>> out.shape, w.shape
        (torch.Size([3, 5, 8]), torch.Size([3, 5, 5]))
    """

    embed_dim: int
    num_heads: int
    dropout: float = 0.0
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    kdim: int | None = None
    vdim: int | None = None
    batch_first: bool = False
    device: Any = None
    dtype: Any = None

    def __post_init__(self) -> None:
        if self.embed_dim <= 0 or self.num_heads <= 0:
            raise ValueError(
                f"embed_dim and num_heads must be greater than 0, got embed_dim={self.embed_dim} "
                f"and num_heads={self.num_heads} instead"
            )
        if self.embed_dim % self.num_heads != 0:
            raise AssertionError("embed_dim must be divisible by num_heads")
        if not 0.0 <= self.dropout <= 1.0:
            raise ValueError(f"MultiheadAttention: dropout must be in [0, 1], got {self.dropout}")
        object.__setattr__(self, "kdim", self.embed_dim if self.kdim is None else self.kdim)
        object.__setattr__(self, "vdim", self.embed_dim if self.vdim is None else self.vdim)

    @property
    def _qkv_same_embed_dim(self) -> bool:
        return self.kdim == self.embed_dim and self.vdim == self.embed_dim

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def init(self, key: _random.Key) -> Params:
        """Xavier-uniform projections, zero biases, Xavier-normal ``bias_k``/``bias_v``."""
        e = self.embed_dim
        opts: dict[str, Any] = {"dtype": self.dtype, "device": self.device}
        kq, kk, kv, kbk, kbv, ko = split_key(key, 6)
        params: Params = {}
        if self._qkv_same_embed_dim:
            params["in_proj_weight"] = _init.xavier_uniform(kq, (3 * e, e), **opts)
        else:
            params["q_proj_weight"] = _init.xavier_uniform(kq, (e, e), **opts)
            params["k_proj_weight"] = _init.xavier_uniform(kk, (e, self.kdim), **opts)
            params["v_proj_weight"] = _init.xavier_uniform(kv, (e, self.vdim), **opts)
        if self.bias:
            params["in_proj_bias"] = _init.zeros(kq, (3 * e,), **opts)
        if self.add_bias_kv:
            params["bias_k"] = _init.xavier_normal(kbk, (1, 1, e), **opts)
            params["bias_v"] = _init.xavier_normal(kbv, (1, 1, e), **opts)
        out_proj = {"weight": _init.kaiming_uniform(ko, (e, e), a=math.sqrt(5), **opts)}
        if self.bias:
            out_proj["bias"] = _init.zeros(ko, (e,), **opts)
        params["out_proj"] = out_proj
        return params

    def _project(
        self, params: Params, q: Tensor, k: Tensor, v: Tensor, self_attn: bool, kv_same: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``Q, K, V`` from ``(N, *, dim)`` inputs; one matmul when the inputs are one tensor."""
        b = params.get("in_proj_bias")
        bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
        if self._qkv_same_embed_dim:
            w = params["in_proj_weight"]
            if self_attn:
                return _L.linear(q, w, b).chunk(3, dim=-1)  # 3 x (N, L, E)
            wq, wk, wv = w.chunk(3)
            if kv_same:
                b_kv = None if b is None else b[self.embed_dim :]
                kk, vv = _L.linear(k, w[self.embed_dim :], b_kv).chunk(2, dim=-1)
                return _L.linear(q, wq, bq), kk, vv
        else:
            wq, wk, wv = params["q_proj_weight"], params["k_proj_weight"], params["v_proj_weight"]
        return _L.linear(q, wq, bq), _L.linear(k, wk, bk), _L.linear(v, wv, bv)

    def apply(  # type: ignore[override]
        self,
        params: Params,
        query: Tensor,
        key_tensor: Tensor,
        /,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        *,
        key: _random.Key | None = None,
        train: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend ``query`` to the keys/values; returns ``(attn_output, attn_weights)``.

        Args:
            params: from :meth:`init` or a loaded torch ``state_dict``.
            query: ``(L, N, E)`` (``(N, L, E)`` with ``batch_first``, ``(L, E)`` unbatched).
            key_tensor: torch's ``key``, ``(S, N, kdim)``; positional only.
            value: ``(S, N, vdim)``.
            key_padding_mask: ``(N, S)``; bool ``True`` = ignore that key, or float added.
            need_weights: also return the attention weights.
            attn_mask: ``(L, S)`` or ``(N num_heads, L, S)``; bool ``True`` = not
                allowed, or float added.
            average_attn_weights: average the returned weights over heads.
            is_causal: hint that ``attn_mask`` is the causal mask (see the class note).
            key: RNG key for dropout on the weights (``train=True``, ``dropout > 0``).
            train: apply dropout.

        Returns:
            ``(attn_output, attn_weights or None)``.
        """
        check_params_fast(self, params)
        for name, t in (("query", query), ("key", key_tensor), ("value", value)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"MultiheadAttention: {name} must be a tensor, got {type(t).__name__}"
                )
        if query.dim() not in (2, 3) or query.shape[-1] != self.embed_dim:
            raise ValueError(
                f"MultiheadAttention: expected query with {self.embed_dim} features and 2 or 3 "
                f"dimensions, got {tuple(query.shape)}"
            )
        if key_tensor.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                "MultiheadAttention: query, key and value must all be batched (3-d) or "
                f"unbatched (2-d), got {query.dim()}, {key_tensor.dim()}, {value.dim()} dimensions"
            )
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                "module method `generate_square_subsequent_mask` to create this mask."
            )
        dropout_p = self.dropout if train else 0.0
        if dropout_p > 0 and key is None:
            raise ValueError(
                "MultiheadAttention: dropout with train=True needs key=... (an fdl.random key)"
            )
        self_attn, kv_same = query is key_tensor and key_tensor is value, key_tensor is value
        unbatched = query.dim() == 2
        if unbatched:
            q, k, v = query.unsqueeze(0), key_tensor.unsqueeze(0), value.unsqueeze(0)  # (1, L, E)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)  # (1, S)
        elif self.batch_first:
            q, k, v = query, key_tensor, value
        else:
            q, k, v = query.transpose(0, 1), key_tensor.transpose(0, 1), value.transpose(0, 1)
        n, length, e = q.shape
        heads, hd = self.num_heads, self.head_dim
        q, k, v = self._project(params, q, k, v, self_attn, kv_same)  # (N, L|S, E)

        causal_hint = is_causal and key_padding_mask is None and not need_weights
        dtype = q.dtype
        attn_bias = (
            None if causal_hint else _FA.mask_to_bias(attn_mask, dtype, true_means_masked=True)
        )
        kpm_bias = _FA.mask_to_bias(key_padding_mask, dtype, true_means_masked=True)
        if attn_bias is not None:
            source = k.shape[1]
            if attn_bias.dim() == 2:
                if tuple(attn_bias.shape) != (length, source):
                    raise RuntimeError(
                        f"The shape of the 2D attn_mask is {tuple(attn_bias.shape)}, but should be "
                        f"{(length, source)}."
                    )
                attn_bias = attn_bias.reshape(1, 1, length, source)  # (1, 1, L, S)
            elif attn_bias.dim() == 3:
                if tuple(attn_bias.shape) != (n * heads, length, source):
                    raise RuntimeError(
                        f"The shape of the 3D attn_mask is {tuple(attn_bias.shape)}, but should be "
                        f"{(n * heads, length, source)}."
                    )
                attn_bias = attn_bias.reshape(n, heads, length, source)  # (N, H, L, S)
            else:
                raise RuntimeError(f"attn_mask's dimension {attn_bias.dim()} is not supported")
        if kpm_bias is not None:
            if tuple(kpm_bias.shape) != (n, k.shape[1]):
                raise ValueError(
                    f"MultiheadAttention: expected key_padding_mask of shape {(n, k.shape[1])}, "
                    f"got {tuple(kpm_bias.shape)}"
                )
            kpm_bias = kpm_bias.reshape(n, 1, 1, -1)  # (N, 1, 1, S)
        if self.add_bias_kv:
            k = torch.cat([k, params["bias_k"].expand(n, 1, e)], dim=1)  # (N, S + 1, E)
            v = torch.cat([v, params["bias_v"].expand(n, 1, e)], dim=1)
            attn_bias, kpm_bias = _pad_last(attn_bias), _pad_last(kpm_bias)
        q = q.reshape(n, length, heads, hd).transpose(1, 2)  # (N, H, L, d)
        k = k.reshape(n, k.shape[1], heads, hd).transpose(1, 2)  # (N, H, S, d)
        v = v.reshape(n, v.shape[1], heads, hd).transpose(1, 2)  # (N, H, S, d)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(n, heads, 1, hd)], dim=2)  # (N, H, S + 1, d)
            v = torch.cat([v, v.new_zeros(n, heads, 1, hd)], dim=2)
            attn_bias, kpm_bias = _pad_last(attn_bias), _pad_last(kpm_bias)
        if attn_bias is None:
            bias = kpm_bias
        else:
            bias = attn_bias if kpm_bias is None else attn_bias + kpm_bias  # (N|1, H|1, L, S)

        weights = None
        if need_weights:
            scores = torch.matmul(q * (1.0 / math.sqrt(hd)), k.transpose(-2, -1))  # (N, H, L, S)
            if bias is not None:
                scores = scores + bias
            weights = _A.softmax(scores, dim=-1)
            if dropout_p > 0:
                weights = _L.dropout(weights, dropout_p, True, key=key)
            out = torch.matmul(weights, v)  # (N, H, L, d)
        else:
            out = _FA.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=dropout_p, is_causal=causal_hint, key=key
            )
        out = out.transpose(1, 2).reshape(n, length, e)  # (N, L, E)
        out = _L.linear(out, params["out_proj"]["weight"], params["out_proj"].get("bias"))
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)  # (N, L, S)
        if unbatched:
            out = out.squeeze(0)  # (L, E)
            weights = None if weights is None else weights.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)  # (L, N, E)
        return out, weights
