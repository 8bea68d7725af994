"""Connectionist temporal classification loss, the forward recursion written out in log space.

Re-exported by :mod:`fdl.losses` as ``ctc_loss`` (``torch.nn.functional.ctc_loss``'s name,
arguments and reductions). The gradient is autograd's through the recursion, which is the
exact gradient of the loss (see the note in :func:`ctc_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fdl import _loss_common as _c

__all__ = ["ctc_loss"]

Tensor = torch.Tensor


def _logsumexp(*xs: Tensor) -> Tensor:
    """Elementwise ``log(sum(exp(x)))`` over ``xs``; ``-inf`` (with a zero gradient) if all are.

    The shift is the detached maximum (0 where it is not finite), so a term that is ``-inf``
    contributes ``exp(-inf) = 0`` to the value and to every gradient.
    """
    stacked = torch.stack(xs)  # (k, ...)
    m = stacked.detach().amax(0)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(stacked - m).sum(0)
    reachable = s > 0
    return torch.where(reachable, torch.log(torch.where(reachable, s, 1.0)) + m, -torch.inf)


def _lengths(name: str, arg: str, lengths: Tensor | Sequence[int] | int, n: int, device) -> Tensor:
    out = torch.as_tensor(lengths, dtype=torch.int64, device=device).reshape(-1)  # (N,)
    if out.numel() != n:
        raise ValueError(f"{name}: {arg} must have one entry per sample ({n}), got {out.numel()}")
    return out


def _padded_targets(targets: Tensor, target_lengths: Tensor, n: int, blank: int) -> Tensor:
    """``(N, S)`` label rows from padded ``(N, S)`` or concatenated ``(sum(lengths),)`` targets."""
    if targets.dim() == 2:
        return targets
    s = int(target_lengths.max()) if n > 0 else 0
    offsets = torch.cumsum(target_lengths, 0) - target_lengths  # (N,)
    pos = torch.arange(s, device=targets.device)  # (S,)
    idx = offsets[:, None] + pos[None, :]  # (N, S)
    valid = pos[None, :] < target_lengths[:, None]  # (N, S)
    idx = torch.where(valid, idx, 0).clamp(max=max(targets.numel() - 1, 0))
    if targets.numel() == 0:
        return torch.full((n, s), blank, dtype=torch.int64, device=targets.device)
    return torch.where(valid, targets[idx], blank)


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor | Sequence[int] | int,
    target_lengths: Tensor | Sequence[int] | int,
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> Tensor:
    r"""Connectionist temporal classification loss (Graves et al., 2006).

    The target ``l`` of length ``S`` is extended with blanks to ``l'`` of length ``2S + 1``
    (``blank, l_1, blank, ..., l_S, blank``). With ``e_t(s) = log_probs[t, l'_s]``, the
    forward variables in log space are

    ``alpha_0(0) = e_0(0)``, ``alpha_0(1) = e_0(1)``, ``alpha_0(s) = -inf`` for ``s >= 2``;
    ``alpha_t(s) = e_t(s) + logsumexp(alpha_{t-1}(s), alpha_{t-1}(s-1), alpha_{t-1}(s-2))``,
    the last term only where ``l'_s`` is not blank and differs from ``l'_{s-2}``.

    A sample's loss is ``-logsumexp(alpha_{T-1}(2S), alpha_{T-1}(2S - 1))`` with ``T`` its
    input length; ``inf`` when no alignment fits (set to 0, with a zero gradient, under
    ``zero_infinity=True``).

    Args:
        log_probs: ``(T, N, C)`` or unbatched ``(T, C)`` log-probabilities (e.g.
            ``log_softmax`` over ``C``).
        targets: ``(N, S)`` label rows padded to any ``S``, or the ``(sum(target_lengths),)``
            concatenation of the labels; unbatched: ``(S,)``. Labels must not be ``blank``.
        input_lengths: ``(N,)`` (or ``()``) lengths of the inputs, ``<= T``; a tensor, a
            sequence of ints or an int.
        target_lengths: ``(N,)`` (or ``()``) lengths of the targets.
        blank: the blank label.
        reduction: ``'none'`` (``(N,)``) | ``'sum'`` | ``'mean'``: the mean over the batch of
            each loss divided by its target length (at least 1).
        zero_infinity: replace infinite losses (and their gradients) by zero.

    Returns:
        The reduced loss, or per-sample losses for ``'none'``.

    Note:
        torch's hand-written backward returns ``exp(log_probs) - gamma`` (``gamma`` the
        posterior of each label), which is the gradient with respect to the *logits* behind a
        ``log_softmax``; fdl's gradient with respect to ``log_probs`` is the exact ``-gamma``.
        Through a ``log_softmax`` both give the same gradient of the logits.

    Example:
        >>> import torch
        >>> lp = torch.log(torch.full((2, 1, 2), 0.5))  # T=2, N=1, C=2; blank 0
        >>> ctc_loss(lp, torch.tensor([[1]]), [2], [1], reduction="sum")  # 3 of 4 paths emit "1"
        tensor(0.2877)
    """
    name = "ctc_loss"
    _c.check_tensors(name, log_probs=log_probs, targets=targets)
    reduction = _c.reduction_of(name, reduction)
    if log_probs.dim() not in (2, 3):
        raise ValueError(f"{name}: log_probs must be (T, N, C) or (T, C), got {log_probs.dim()}-d")
    unbatched = log_probs.dim() == 2
    if unbatched:
        log_probs = log_probs.unsqueeze(1)  # (T, 1, C)
        targets = targets.reshape(1, -1)  # (1, S)
    t_max, n, c = log_probs.shape
    if not 0 <= blank < c:
        raise ValueError(f"{name}: blank must be in [0, {c - 1}], got {blank}")
    if targets.dim() not in (1, 2) or targets.dtype.is_floating_point:
        raise ValueError(f"{name}: targets must be integer (N, S) or (sum(target_lengths),)")
    device = log_probs.device
    in_len = _lengths(name, "input_lengths", input_lengths, n, device)
    tgt_len = _lengths(name, "target_lengths", target_lengths, n, device)
    if _c.any_true((in_len < 0) | (in_len > t_max)):
        raise ValueError(f"{name}: input_lengths must be in [0, {t_max}]")
    if targets.dim() == 2 and _c.any_true(tgt_len > targets.shape[1]):
        raise ValueError(f"{name}: target_lengths must be at most targets.shape[1]")
    if targets.dim() == 1 and not torch.compiler.is_compiling():
        if int(tgt_len.sum()) != targets.numel():
            raise ValueError(f"{name}: concatenated targets must have sum(target_lengths) entries")

    labels = _padded_targets(targets.to(torch.int64), tgt_len, n, blank).to(device)  # (N, S)
    s = labels.shape[1]
    blanks = torch.full_like(labels, blank)
    ext = torch.stack([blanks, labels], -1).reshape(n, 2 * s)  # (N, 2S): blank, l_1, blank, ...
    ext = torch.cat([ext, blanks[:, :1] if s else torch.full((n, 1), blank, device=device)], 1)
    length = 2 * s + 1  # L
    pos = torch.arange(length, device=device)  # (L,)
    prev2 = torch.cat([torch.full((n, 2), blank, device=device), ext[:, :-2]], 1)[:, :length]
    skip = (pos >= 2)[None, :] & (ext != blank) & (ext != prev2)  # (N, L)

    emit = log_probs.gather(2, ext[None].expand(t_max, n, length))  # (T, N, L)
    neg_inf = torch.full((n, length), -torch.inf, dtype=log_probs.dtype, device=device)
    alpha = torch.where((pos <= 1)[None, :], emit[0], neg_inf)  # (N, L)
    pad1 = neg_inf[:, :1]
    pad2 = neg_inf[:, :2]
    for t in range(1, t_max):
        from_prev = torch.cat([pad1, alpha[:, :-1]], 1)[:, :length]  # alpha_{t-1}(s - 1)
        from_skip = torch.cat([pad2, alpha[:, :-2]], 1)[:, :length]  # alpha_{t-1}(s - 2)
        from_skip = torch.where(skip, from_skip, -torch.inf)
        new = _logsumexp(alpha, from_prev, from_skip) + emit[t]
        alpha = torch.where((t < in_len)[:, None], new, alpha)  # frozen past the input length

    last = alpha.gather(1, (2 * tgt_len)[:, None])[:, 0]  # ends on the final blank
    before = alpha.gather(1, (2 * tgt_len - 1).clamp_min(0)[:, None])[:, 0]  # on the last label
    before = torch.where(tgt_len > 0, before, -torch.inf)
    loss = -_logsumexp(last, before)  # (N,)
    loss = torch.where(in_len > 0, loss, torch.where(tgt_len == 0, 0.0, torch.inf).to(loss))
    if zero_infinity:
        loss = torch.where(torch.isinf(loss), 0.0, loss)
    if reduction == "mean":
        return (loss / tgt_len.clamp_min(1).to(loss.dtype)).mean()
    if unbatched:
        loss = loss.reshape(())
    return _c.reduce(loss, reduction)
