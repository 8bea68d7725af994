"""Evaluation metrics: pure functions of prediction and target tensors.

Classification metrics take ``input`` either as scores of shape ``(N, C)``
(logits or probabilities: the predicted class is the ``argmax`` over ``C``) or
as predicted class indices of shape ``(N,)``, and ``target`` as integer class
indices of shape ``(N,)``. Regression metrics take two floating tensors of one
shape. Every metric returns a tensor (a 0-dim tensor for a single number), so
metrics can be computed inside compiled or vmapped functions.

Classification metrics accept an optional boolean ``mask`` of shape ``(N,)``:
only samples where ``mask`` is true count. Masks keep shapes fixed, which lets
one compiled or vmapped evaluation score a different subset per model (for
example each fold of a cross-validation).

Checks of values (class indices in range) run in eager mode only; inside
``torch.compile`` or ``torch.func.vmap`` only shapes and dtypes are checked.

Argument order follows PyTorch (``input, target``), which is the reverse of
scikit-learn's ``(y_true, y_pred)``.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Literal

import torch

from fdl.nn.functional import log_softmax

__all__ = [
    "accuracy",
    "confusion_matrix",
    "f1",
    "log_loss",
    "mae",
    "mse",
    "precision",
    "r2",
    "recall",
    "top_k_accuracy",
]

Average = Literal["macro", "micro"] | None

# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


def _is_traced(*tensors: torch.Tensor | None) -> bool:
    """True inside torch.compile or a torch.func transform: values cannot be inspected."""
    if torch.compiler.is_compiling():
        return True
    return any(
        t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors
    )


def _check_tensor(x: object, name: str, fn: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_target(target: object, fn: str) -> torch.Tensor:
    target = _check_tensor(target, "target", fn)
    if target.ndim != 1:
        raise ValueError(
            f"{fn}: target must be class indices of shape (N,), got shape {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype.is_complex:
        raise TypeError(f"{fn}: target must hold integer class indices, got dtype {target.dtype}")
    if target.shape[0] == 0:
        raise ValueError(f"{fn}: got an empty batch (N = 0)")
    return target


def _check_mask(mask: torch.Tensor | None, n: int, fn: str) -> torch.Tensor | None:
    if mask is None:
        return None
    mask = _check_tensor(mask, "mask", fn)
    if mask.shape != (n,):
        raise ValueError(f"{fn}: mask must have shape ({n},) like target, got {tuple(mask.shape)}")
    return mask != 0


def _split_input(
    input: torch.Tensor, target: torch.Tensor, fn: str
) -> tuple[torch.Tensor, int | None]:
    """Predicted classes ``(N,)`` and the class count implied by scores (None for indices)."""
    n = target.shape[0]
    if input.ndim == 2:
        if input.shape[0] != n:
            raise ValueError(
                f"{fn}: input scores (N, C) and target (N,) disagree on N: "
                f"input {tuple(input.shape)} vs target {tuple(target.shape)}"
            )
        if not input.dtype.is_floating_point:
            raise TypeError(f"{fn}: input scores (N, C) must be floating, got {input.dtype}")
        if input.shape[1] == 0:
            raise ValueError(f"{fn}: input scores have C = 0 classes")
        return input.argmax(dim=1), input.shape[1]
    if input.ndim == 1:
        if input.shape != target.shape:
            raise ValueError(
                f"{fn}: predicted classes (N,) and target (N,) must have one shape, got "
                f"input {tuple(input.shape)} vs target {tuple(target.shape)}"
            )
        if input.dtype.is_floating_point or input.dtype.is_complex:
            raise TypeError(
                f"{fn}: 1-d input must be integer class indices, got dtype {input.dtype}; "
                "pass scores as (N, C)"
            )
        return input, None
    raise ValueError(
        f"{fn}: input must be scores (N, C) or class indices (N,), got shape {tuple(input.shape)}"
    )


def _check_range(x: torch.Tensor, num_classes: int, name: str, fn: str) -> None:
    if _is_traced(x):
        return
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{fn}: {name} holds class indices in [{lo}, {hi}], expected [0, {num_classes - 1}] "
            f"for num_classes = {num_classes}"
        )


def _rate_dtype(input: torch.Tensor) -> torch.dtype:
    return input.dtype if input.dtype.is_floating_point else torch.get_default_dtype()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum()


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------


def accuracy(
    input: torch.Tensor, target: torch.Tensor, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Fraction of samples whose predicted class equals the target.

    .. math::
        \mathrm{accuracy} = \frac{1}{N} \sum_{n=1}^{N} [\hat y_n = y_n],
        \qquad \hat y_n = \arg\max_c \mathrm{input}_{n c}

    With ``mask`` the sum and :math:`N` run over the masked-in samples only.

    Args:
        input: scores ``(N, C)`` (logits or probabilities) or predicted classes ``(N,)``.
        target: class indices ``(N,)``.
        mask: optional boolean ``(N,)``; samples where it is false are ignored.

    Returns:
        A 0-dim floating tensor in ``[0, 1]`` (``nan`` when ``mask`` selects nothing).

    Example:
        >>> import torch
        >>> accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
        tensor(0.6667)
    """
    fn = "accuracy"
    target = _check_target(target, fn)
    input = _check_tensor(input, "input", fn)
    pred, num_classes = _split_input(input, target, fn)
    if num_classes is not None:
        _check_range(target, num_classes, "target", fn)
    mask = _check_mask(mask, target.shape[0], fn)
    return _masked_mean((pred == target).to(_rate_dtype(input)), mask)


def top_k_accuracy(
    input: torch.Tensor,
    target: torch.Tensor,
    k: int = 5,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Fraction of samples whose target class is among the ``k`` highest scores.

    .. math::
        \mathrm{top\text{-}k} = \frac{1}{N} \sum_{n=1}^{N}
        \Big[\, \#\{c : s_{n c} > s_{n y_n}\} < k \,\Big]

    where :math:`s = \mathrm{input}`. A sample counts as a hit when fewer than
    ``k`` classes score strictly higher than its target, so ties at the
    boundary count in the target's favour (``torch.topk`` would break them by
    position). ``k = 1`` equals :func:`accuracy` when the maximum is unique.

    Args:
        input: scores ``(N, C)``.
        target: class indices ``(N,)``.
        k: how many top classes count, ``1 <= k <= C``.
        mask: optional boolean ``(N,)``; samples where it is false are ignored.

    Returns:
        A 0-dim floating tensor in ``[0, 1]``.

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])
        >>> top_k_accuracy(s, torch.tensor([2, 2]), k=2)
        tensor(0.5000)
    """
    fn = "top_k_accuracy"
    target = _check_target(target, fn)
    input = _check_tensor(input, "input", fn)
    if input.ndim != 2:
        raise ValueError(f"{fn}: input must be scores (N, C), got shape {tuple(input.shape)}")
    _split_input(input, target, fn)
    num_classes = input.shape[1]
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{fn}: k must be an int, got {type(k).__name__}")
    if not 1 <= k <= num_classes:
        raise ValueError(f"{fn}: k must lie in [1, C] = [1, {num_classes}], got k = {k}")
    _check_range(target, num_classes, "target", fn)
    mask = _check_mask(mask, target.shape[0], fn)
    target_score = input.gather(1, target.long().unsqueeze(1))  # (N, 1)
    n_above = (input > target_score).sum(dim=1)  # (N,)
    return _masked_mean((n_above < k).to(_rate_dtype(input)), mask)


def confusion_matrix(
    input: torch.Tensor,
    target: torch.Tensor,
    num_classes: int | None = None,
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Counts of (true class, predicted class) pairs.

    .. math::
        M_{i j} = \#\{n : y_n = i,\ \hat y_n = j\}

    Rows are true classes and columns predicted classes (the scikit-learn
    layout), so row sums are the class supports and the diagonal holds the
    correct predictions.

    Args:
        input: scores ``(N, C)`` or predicted classes ``(N,)``.
        target: class indices ``(N,)``.
        num_classes: ``C``. Taken from the scores' shape when omitted; for class
            indices it is then ``max(input.max(), target.max()) + 1``, which
            reads values and so works in eager mode only. Pass it inside
            ``torch.compile``/``vmap``.
        mask: optional boolean ``(N,)``; samples where it is false are not counted.

    Returns:
        An ``int64`` tensor of shape ``(C, C)``.

    Example:
        >>> import torch
        >>> confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]))
        tensor([[1, 0, 0],
                [0, 1, 0],
                [0, 1, 1]])
    """
    return _confusion_matrix(input, target, num_classes, mask, "confusion_matrix")


def _confusion_matrix(
    input: torch.Tensor,
    target: torch.Tensor,
    num_classes: int | None,
    mask: torch.Tensor | None,
    fn: str,
) -> torch.Tensor:
    target = _check_target(target, fn)
    input = _check_tensor(input, "input", fn)
    pred, score_classes = _split_input(input, target, fn)
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise TypeError(f"{fn}: num_classes must be an int, got {type(num_classes).__name__}")
        if num_classes < 1:
            raise ValueError(f"{fn}: num_classes must be >= 1, got {num_classes}")
        if score_classes is not None and score_classes != num_classes:
            raise ValueError(
                f"{fn}: input scores have C = {score_classes} classes but "
                f"num_classes = {num_classes}"
            )
    elif score_classes is not None:
        num_classes = score_classes
    else:
        if _is_traced(input, target):
            raise ValueError(
                f"{fn}: pass num_classes when input holds class indices inside "
                "torch.compile or vmap"
            )
        num_classes = int(torch.maximum(pred.max(), target.max())) + 1
    _check_range(target, num_classes, "target", fn)
    _check_range(pred, num_classes, "input", fn)
    mask = _check_mask(mask, target.shape[0], fn)
    c = num_classes
    flat = target.long() * c + pred.long()  # (N,) index into the flattened (C, C) matrix
    ones = torch.ones_like(flat) if mask is None else mask.long()
    counts = torch.zeros(c * c, dtype=torch.int64, device=flat.device).scatter_add(0, flat, ones)
    return counts.reshape(c, c)


def _per_class(
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    present: torch.Tensor,
    average: Average,
    dtype: torch.dtype,
) -> torch.Tensor:
    """numerator / denominator per class (0 where the denominator is 0), then averaged."""
    num, den = numerator.to(dtype), denominator.to(dtype)
    per_class = torch.where(den > 0, num / den.clamp_min(1), torch.zeros_like(num))
    if average is None:
        return per_class
    if average == "macro":
        p = present.to(dtype)
        return (per_class * p).sum() / p.sum()
    # micro
    total = den.sum()
    return torch.where(total > 0, num.sum() / total.clamp_min(1), torch.zeros_like(total))


def _check_average(average: object, fn: str) -> None:
    if average not in ("macro", "micro", None):
        raise ValueError(f"{fn}: average must be 'macro', 'micro' or None, got {average!r}")


def _counts(
    input: torch.Tensor,
    target: torch.Tensor,
    num_classes: int | None,
    mask: torch.Tensor | None,
    fn: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True positives, false positives and false negatives per class, each ``(C,)``."""
    m = _confusion_matrix(input, target, num_classes, mask, fn)
    tp = m.diagonal()
    fp = m.sum(dim=0) - tp  # predicted c, truly another class
    fn_ = m.sum(dim=1) - tp  # truly c, predicted another class
    return tp, fp, fn_


_AVERAGE_DOC = """
    Averaging (``average``):

    * ``"macro"``: the unweighted mean of the per-class values over the classes
      that occur in ``target`` or in the predictions (:math:`tp + fp + fn > 0`),
      as scikit-learn does without ``labels``; classes absent from both are left
      out instead of counting as 0.
    * ``"micro"``: computed from the counts summed over classes. For
      single-label classification micro precision, recall and F1 all equal
      :func:`accuracy`.
    * ``None``: the per-class values, a ``(C,)`` tensor.

    Zero division: a per-class value whose denominator is 0 is 0 (scikit-learn's
    ``zero_division=0``); a macro average over no present class is ``nan``.

    Args:
        input: scores ``(N, C)`` or predicted classes ``(N,)``.
        target: class indices ``(N,)``.
        num_classes: ``C``, as in :func:`confusion_matrix`.
        average: ``"macro"``, ``"micro"`` or ``None``.
        mask: optional boolean ``(N,)``; samples where it is false are ignored.

    Returns:
        A 0-dim tensor, or a ``(C,)`` tensor with ``average=None``.
"""


_EXAMPLE_DOC = """
    Example:
        >>> import torch
        >>> NAME(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), average=None)
        OUTPUT
"""


def _rate_metric(
    name: str,
    ratio: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    doc: str,
    example: str,
) -> Callable[..., torch.Tensor]:
    """A per-class rate metric: ``num / den`` with ``(num, den) = ratio(tp, fp, fn)``.

    Its docstring is ``doc``, then the averaging rules and arguments, then an example on
    one pair of 4-sample tensors whose printed result (``average=None``) is ``example``.
    """

    def metric(
        input: torch.Tensor,
        target: torch.Tensor,
        num_classes: int | None = None,
        *,
        average: Average = "macro",
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _check_average(average, name)
        tp, fp, fn = _counts(input, target, num_classes, mask, name)
        num, den = ratio(tp, fp, fn)
        return _per_class(num, den, tp + fp + fn > 0, average, _rate_dtype(input))

    metric.__name__ = metric.__qualname__ = name
    tail = _EXAMPLE_DOC.replace("NAME", name).replace("OUTPUT", example)
    metric.__doc__ = doc + _AVERAGE_DOC + tail
    return metric


# precision and recall: the share of true positives among one side's counts,
# tp / (tp + fp) for the predictions, tp / (tp + fn) for the targets
_TP_SHARE_DOC = string.Template(
    r"""$title: of the samples $given, the fraction $found.

    .. math::
        ${S}_c = \frac{tp_c}{tp_c + ${e}_c}, \qquad
        ${S}_{\text{micro}} = \frac{\sum_c tp_c}{\sum_c (tp_c + ${e}_c)}

    with :math:`tp_c = M_{cc}` and :math:`${e}_c = $e_sum` from
    :func:`confusion_matrix`.
"""
)


def _tp_share(
    name: str, title: str, given: str, found: str, error: str, error_sum: str, example: str
) -> Callable[..., torch.Tensor]:
    """``tp / (tp + error)`` per class: ``error="fp"`` is precision, ``"fn"`` recall."""
    doc = _TP_SHARE_DOC.substitute(
        title=title, given=given, found=found, S=title[0], e=error, e_sum=error_sum
    )

    def ratio(
        tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return tp, tp + (fp if error == "fp" else fn)

    return _rate_metric(name, ratio, doc, example)


precision = _tp_share(
    "precision",
    "Precision",
    "predicted as class :math:`c`",
    "truly :math:`c`",
    "fp",
    r"\sum_{i \ne c} M_{ic}",
    "tensor([0.5000, 1.0000])",
)

recall = _tp_share(
    "recall",
    "Recall",
    "truly of class :math:`c`",
    "predicted as :math:`c`",
    "fn",
    r"\sum_{j \ne c} M_{cj}",
    "tensor([1.0000, 0.6667])",
)

f1 = _rate_metric(
    "f1",
    lambda tp, fp, fn: (2 * tp, 2 * tp + fp + fn),
    r"""F1 score: the harmonic mean of precision and recall.

    .. math::
        F_c = \frac{2 P_c R_c}{P_c + R_c} = \frac{2\, tp_c}{2\, tp_c + fp_c + fn_c},
        \qquad
        F_{\text{micro}} = \frac{2 \sum_c tp_c}{\sum_c (2\, tp_c + fp_c + fn_c)}

    Macro F1 is the mean of the per-class :math:`F_c`, not the harmonic mean of
    macro precision and macro recall.
""",
    "tensor([0.6667, 0.8000])",
)


def log_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    from_logits: bool = False,
    eps: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Mean negative log-likelihood of the target classes (cross-entropy).

    .. math::
        L = -\frac{1}{N} \sum_{n=1}^{N} \log \operatorname{clip}(p_{n y_n}, \epsilon, 1 - \epsilon)

    For binary problems ``input`` may be the probabilities of class 1, shape
    ``(N,)``, with :math:`p_{n1} = \mathrm{input}_n` and
    :math:`p_{n0} = 1 - \mathrm{input}_n`. With ``from_logits=True`` the
    input holds logits ``(N, C)`` and
    :math:`\log p_{nc} = z_{nc} - \log \sum_{c'} e^{z_{nc'}}` is used without
    clipping.

    Args:
        input: probabilities ``(N, C)`` (rows summing to 1), class-1 probabilities
            ``(N,)``, or logits ``(N, C)`` with ``from_logits=True``.
        target: class indices ``(N,)`` (0 or 1 for ``(N,)`` input).
        from_logits: whether ``input`` holds logits.
        eps: clipping bound for probabilities; default ``torch.finfo(input.dtype).eps``.
        mask: optional boolean ``(N,)``; samples where it is false are ignored.

    Returns:
        A 0-dim tensor (natural logarithm).

    Note:
        Unlike scikit-learn's ``log_loss`` the rows are not renormalised.

    Example:
        >>> import torch
        >>> log_loss(torch.tensor([[0.5, 0.5], [0.9, 0.1]]), torch.tensor([0, 0]))
        tensor(0.3993)
    """
    fn = "log_loss"
    target = _check_target(target, fn)
    input = _check_tensor(input, "input", fn)
    if not input.dtype.is_floating_point:
        raise TypeError(f"{fn}: input must be floating, got dtype {input.dtype}")
    n = target.shape[0]
    if input.ndim == 1:
        if from_logits:
            raise ValueError(f"{fn}: from_logits=True needs logits of shape (N, C)")
        if input.shape != target.shape:
            raise ValueError(
                f"{fn}: binary probabilities (N,) and target (N,) must have one shape, got "
                f"input {tuple(input.shape)} vs target {tuple(target.shape)}"
            )
        input = torch.stack([1 - input, input], dim=1)  # (N, 2)
    elif input.ndim != 2 or input.shape[0] != n:
        raise ValueError(
            f"{fn}: input must be (N, C) or (N,) with the N of target, got "
            f"input {tuple(input.shape)} vs target {tuple(target.shape)}"
        )
    num_classes = input.shape[1]
    _check_range(target, num_classes, "target", fn)
    mask = _check_mask(mask, n, fn)
    idx = target.long().unsqueeze(1)  # (N, 1)
    if from_logits:
        logp = log_softmax(input, dim=-1).gather(1, idx).squeeze(1)
    else:
        e = torch.finfo(input.dtype).eps if eps is None else eps
        logp = input.gather(1, idx).squeeze(1).clamp(e, 1 - e).log()
    return _masked_mean(-logp, mask)


# ---------------------------------------------------------------------------
# Regression
# ---------------------------------------------------------------------------


def _check_regression(input: object, target: object, fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    input = _check_tensor(input, "input", fn)
    target = _check_tensor(target, "target", fn)
    if input.shape != target.shape:
        raise ValueError(
            f"{fn}: input and target must have one shape (no broadcasting), got "
            f"input {tuple(input.shape)} vs target {tuple(target.shape)}"
        )
    if not (input.dtype.is_floating_point and target.dtype.is_floating_point):
        raise TypeError(
            f"{fn}: input and target must be floating, got {input.dtype} and {target.dtype}"
        )
    if input.numel() == 0:
        raise ValueError(f"{fn}: got empty tensors")
    return input, target


_MEAN_ERROR_DOC = string.Template(
    r"""Mean $error error over all elements.

    .. math::
        \mathrm{$abbr} = \frac{1}{n} \sum_{i=1}^{n} $term

    Args:
        input: predictions :math:`\hat y`, any shape.
        target: targets :math:`y`, the same shape (no broadcasting).

    Returns:
        A 0-dim tensor.

    Example:
        >>> import torch
        >>> $name(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 4.0]))
        $example
    """
)


def _mean_error(
    name: str,
    error: str,
    term: str,
    of_difference: Callable[[torch.Tensor], torch.Tensor],
    example: str,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``mean(of_difference(input - target))``; ``term`` is its summand in LaTeX."""

    def metric(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        input, target = _check_regression(input, target, name)
        return of_difference(input - target).mean()

    metric.__name__ = metric.__qualname__ = name
    metric.__doc__ = _MEAN_ERROR_DOC.substitute(
        error=error, abbr=name.upper(), term=term, name=name, example=example
    )
    return metric


mse = _mean_error("mse", "squared", r"(\hat y_i - y_i)^2", torch.square, "tensor(1.6667)")

mae = _mean_error("mae", "absolute", r"|\hat y_i - y_i|", torch.abs, "tensor(1.)")


def r2(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Coefficient of determination :math:`R^2`.

    .. math::
        R^2 = 1 - \frac{\sum_n (y_n - \hat y_n)^2}{\sum_n (y_n - \bar y)^2},
        \qquad \bar y = \frac{1}{N} \sum_n y_n

    For ``(N, D)`` inputs :math:`R^2` is computed per output column and the
    :math:`D` values are averaged uniformly (scikit-learn's
    ``multioutput="uniform_average"``).

    Zero division: where the target is constant (denominator 0) the column's
    :math:`R^2` is 1 for a perfect prediction and 0 otherwise (scikit-learn's
    ``force_finite=True``).

    Args:
        input: predictions :math:`\hat y`, ``(N,)`` or ``(N, D)``.
        target: targets :math:`y`, the same shape, ``N >= 2``.

    Returns:
        A 0-dim tensor (1 is perfect; it can be negative).

    Example:
        >>> import torch
        >>> r2(torch.tensor([2.5, 0.0, 2.0, 8.0]), torch.tensor([3.0, -0.5, 2.0, 7.0]))
        tensor(0.9486)
    """
    fn = "r2"
    input, target = _check_regression(input, target, fn)
    if input.ndim not in (1, 2):
        raise ValueError(f"{fn}: input must be (N,) or (N, D), got shape {tuple(input.shape)}")
    if input.shape[0] < 2:
        raise ValueError(f"{fn}: needs at least 2 samples, got N = {input.shape[0]}")
    ss_res = (target - input).square().sum(dim=0)  # (D,) or ()
    ss_tot = (target - target.mean(dim=0)).square().sum(dim=0)
    safe = torch.where(ss_tot > 0, ss_tot, torch.ones_like(ss_tot))
    per_output = torch.where(
        ss_tot > 0,
        1 - ss_res / safe,
        torch.where(ss_res == 0, torch.ones_like(ss_res), torch.zeros_like(ss_res)),
    )
    return per_output.mean()
