"""Optimizers as pure gradient transformations, step for step identical to ``torch.optim``.

::

    opt = fdl.optim.adam(lr=1e-3)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = fdl.optim.apply_updates(params, updates)

Optimizers (:mod:`fdl.optim.alias`) are ``chain``s of building blocks, grouped
by job: :mod:`fdl.optim.scaling` (factors, learning rate, weight decay,
momentum), :mod:`fdl.optim.adaptive` (Adam, RMSprop, Adagrad, ...),
:mod:`fdl.optim.clipping`, :mod:`fdl.optim.wrappers` (masking, accumulation,
skipping non-finite steps) and :mod:`fdl.optim.combine` (parameter groups,
injected hyperparameters, lookahead, moving averages); learning-rate schedules live in
:mod:`fdl.optim.schedules`; :func:`make_update` builds a compiled
update-and-apply step, optionally with buffer donation.
"""

from fdl.optim import adaptive, alias, clipping, combine, scaling, schedules, wrappers
from fdl.optim.adaptive import (
    ScaleByAdadeltaState,
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByNadamState,
    ScaleByRmsState,
    ScaleByRssState,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_adamax,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rss,
)
from fdl.optim.alias import adadelta, adagrad, adam, adamax, adamw, nadam, radam, rmsprop, sgd
from fdl.optim.base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    Schedule,
    apply_updates,
    chain,
)
from fdl.optim.clipping import clip, clip_by_global_norm
from fdl.optim.combine import (
    EmaState,
    InjectHyperparamsState,
    LookaheadParams,
    LookaheadState,
    MultiTransformState,
    PartitionState,
    ema,
    incremental_update,
    inject_hyperparams,
    lookahead,
    multi_transform,
    partition,
    periodic_update,
)
from fdl.optim.scaling import (
    ScaleByScheduleState,
    TraceState,
    add_decayed_weights,
    identity,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
    trace,
)
from fdl.optim.step import make_update
from fdl.optim.wrappers import (
    ApplyIfFiniteState,
    MaskedState,
    MultiSteps,
    MultiStepsState,
    apply_if_finite,
    freeze,
    masked,
    multi_steps,
    set_to_zero,
    skip_large_updates,
    skip_not_finite,
)

# the building blocks are listed in their own modules
__all__ = sorted(
    [
        "EmptyState",
        "GradientTransformation",
        "ScalarOrSchedule",
        "Schedule",
        "apply_updates",
        "chain",
        "make_update",
        "schedules",
        *alias.__all__,
        *adaptive.__all__,
        *clipping.__all__,
        *combine.__all__,
        *scaling.__all__,
        *wrappers.__all__,
    ]
)
