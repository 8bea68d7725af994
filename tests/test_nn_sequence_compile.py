"""The compiled LSTM language-model step and Transformer-classifier step in one process.

Each file's never-recompiles test passes alone; run one after the other, the second step
used to recompile on its second call (dynamo's automatic-dynamic record is kept per
function identity, which every step built by ``fdl._step.make_step`` shared, so the
second model's sizes compiled dynamic and the graph guarded on its view inputs' ``_base``).
Here the steps are built and called once each in the order LSTM, Transformer, LSTM (so
each model's step follows the other's), then called again under ``error_on_recompile``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch._dynamo.testing as dynamo_testing
from test_nn_recurrent import VOCAB as LM_VOCAB
from test_nn_recurrent import _lstm_lm
from test_nn_transformer import CLASSES, _classifier
from test_nn_transformer import VOCAB as CLS_VOCAB

import fdl


def _lm_case(gen: torch.Generator) -> tuple[Any, Any, list[tuple[Any, ...]]]:
    init, loss_fn = _lstm_lm()
    keys = fdl.random.split(fdl.random.key(1), 2)
    batches = [
        (
            torch.randint(0, LM_VOCAB, (3, 6), generator=gen),
            torch.randint(0, LM_VOCAB, (3, 6), generator=gen),
            k,
        )
        for k in keys
    ]
    return init, loss_fn, batches


def _classifier_case(gen: torch.Generator) -> tuple[Any, Any, list[tuple[Any, ...]]]:
    init, logits = _classifier()

    def loss_fn(params: Any, tokens: torch.Tensor, labels: torch.Tensor, key: Any) -> torch.Tensor:
        return fdl.losses.cross_entropy(logits(params, tokens, key, True), labels)

    keys = fdl.random.split(fdl.random.key(1), 2)
    batches = [
        (
            torch.randint(0, CLS_VOCAB, (4, 6), generator=gen),
            torch.randint(0, CLASSES, (4,), generator=gen),
            k,
        )
        for k in keys
    ]
    return init, loss_fn, batches


# (name, builder of (init, loss_fn, two batches))
CASES = {"lstm_lm": _lm_case, "transformer_classifier": _classifier_case}


def test_sequence_steps_built_in_one_process_never_recompile() -> None:
    gen = torch.Generator().manual_seed(0)
    runs = []
    for name in ["lstm_lm", "transformer_classifier", "lstm_lm"]:  # both orders
        init, loss_fn, batches = CASES[name](gen)
        opt = fdl.optim.sgd(lr=0.1)
        counter = dynamo_testing.CompileCounterWithBackend("eager")
        step = fdl.train.make_train_step(loss_fn, opt, compile={"backend": counter})
        params = init(fdl.random.key(0))
        params, state, _ = step(params, opt.init(params), *batches[0])
        runs.append((name, step, params, state, batches[1], counter))
    with torch._dynamo.config.patch(error_on_recompile=True):
        for name, step, params, state, batch, counter in runs:
            _, _, loss = step(params, state, *batch)
            assert torch.isfinite(loss), name
            assert counter.frame_count == 1, name
