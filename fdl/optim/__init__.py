"""Optimizers as pure gradient transformations, step for step identical to ``torch.optim``.

::

    opt = fdl.optim.adam(lr=1e-3)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = fdl.optim.apply_updates(params, updates)

Optimizers (:mod:`fdl.optim.alias`) are ``chain``s of building blocks
(:mod:`fdl.optim.transform`); learning-rate schedules live in
:mod:`fdl.optim.schedules`; :func:`make_update` builds a compiled
update-and-apply step, optionally with buffer donation.
"""

from fdl.optim import schedules
from fdl.optim.alias import adadelta, adagrad, adam, adamax, adamw, nadam, radam, rmsprop, sgd
from fdl.optim.base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    Schedule,
    apply_updates,
    chain,
    identity,
)
from fdl.optim.step import make_update
from fdl.optim.transform import (
    ApplyIfFiniteState,
    MaskedState,
    MultiStepsState,
    ScaleByAdadeltaState,
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByNadamState,
    ScaleByRmsState,
    ScaleByRssState,
    ScaleByScheduleState,
    TraceState,
    add_decayed_weights,
    apply_if_finite,
    clip,
    clip_by_global_norm,
    freeze,
    masked,
    multi_steps,
    scale,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_adamax,
    scale_by_learning_rate,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rss,
    scale_by_schedule,
    set_to_zero,
    trace,
)

__all__ = [
    "ApplyIfFiniteState",
    "EmptyState",
    "GradientTransformation",
    "MaskedState",
    "MultiStepsState",
    "ScalarOrSchedule",
    "ScaleByAdadeltaState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByNadamState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "Schedule",
    "TraceState",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "add_decayed_weights",
    "apply_if_finite",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_global_norm",
    "freeze",
    "identity",
    "make_update",
    "masked",
    "multi_steps",
    "nadam",
    "radam",
    "rmsprop",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_learning_rate",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "schedules",
    "set_to_zero",
    "sgd",
    "trace",
]
