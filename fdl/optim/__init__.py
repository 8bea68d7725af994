"""Optimizers as pure gradient transformations, step for step identical to ``torch.optim``.

::

    opt = fdl.optim.adam(lr=1e-3)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = fdl.optim.apply_updates(params, updates)

Optimizers (:mod:`fdl.optim.alias`) are ``chain``s of building blocks, grouped
by job: :mod:`fdl.optim.scaling` (factors, learning rate, weight decay,
momentum), :mod:`fdl.optim.adaptive` (Adam, RMSprop, Adagrad, ...),
:mod:`fdl.optim.sign` (Rprop), :mod:`fdl.optim.averaging` (ASGD's average),
:mod:`fdl.optim.factored` (Adafactor), :mod:`fdl.optim.orthogonal` and
:mod:`fdl.optim.momentum` (Muon), :mod:`fdl.optim.sparse` (SparseAdam),
:mod:`fdl.optim.clipping`, :mod:`fdl.optim.wrappers` (masking, accumulation,
skipping non-finite steps) and :mod:`fdl.optim.combine` (parameter groups,
injected hyperparameters, lookahead, moving averages); learning-rate schedules live in
:mod:`fdl.optim.schedules`; :func:`make_update` builds a compiled
update-and-apply step, optionally with buffer donation.
"""

from fdl.optim import (
    adaptive,
    alias,
    averaging,
    clipping,
    combine,
    factored,
    momentum,
    orthogonal,
    scaling,
    schedules,
    sign,
    sparse,
    swa,
    wrappers,
)
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
from fdl.optim.alias import (
    adadelta,
    adafactor,
    adagrad,
    adam,
    adamax,
    adamw,
    asgd,
    muon,
    nadam,
    radam,
    rmsprop,
    rprop,
    sgd,
    sparse_adam,
)
from fdl.optim.averaging import (
    AverageParamsState,
    asgd_eta,
    asgd_mu,
    average_params,
    averaged_params,
)
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
from fdl.optim.factored import (
    ScaleByFactoredRmsState,
    ScaleByRelativeStepState,
    scale_by_factored_rms,
    scale_by_param_scale,
    scale_by_relative_step,
)
from fdl.optim.momentum import EmaTraceState, ema_trace
from fdl.optim.orthogonal import newton_schulz, orthogonalize, scale_by_shape
from fdl.optim.quasi_newton import LBFGSState, Minimizer, lbfgs
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
from fdl.optim.sign import ScaleByRpropState, scale_by_rprop
from fdl.optim.sparse import ScaleBySparseAdamState, scale_by_sparse_adam
from fdl.optim.step import make_update
from fdl.optim.swa import (
    SWALR,
    AveragedModel,
    AveragedState,
    get_ema_avg_fn,
    get_ema_multi_avg_fn,
    get_swa_avg_fn,
    get_swa_multi_avg_fn,
    update_bn,
)
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
        "swa",
        *alias.__all__,
        *adaptive.__all__,
        *averaging.__all__,
        *factored.__all__,
        *momentum.__all__,
        *orthogonal.__all__,
        *sign.__all__,
        *sparse.__all__,
        *clipping.__all__,
        *combine.__all__,
        "LBFGSState",
        "Minimizer",
        "lbfgs",
        *scaling.__all__,
        *wrappers.__all__,
        *swa.__all__,
    ]
)
