"""Learning-rate and momentum schedules as pure curves, and the LR finder's suggestions (pure functions of a
sweep). The callback that applies curves while training is `convscope.train.scheduler.ParamScheduler`."""

from convscope.schedules.curves import (
    Constant,
    Cosine,
    Curve,
    Exponential,
    Linear,
    Phases,
    StepDecay,
    one_cycle_lr,
    one_cycle_mom,
    one_cycle_schedules,
    phases,
    step_position,
    warmup_constant,
    warmup_cosine,
)

__all__ = [
    "Constant",
    "Cosine",
    "Curve",
    "Exponential",
    "Linear",
    "Phases",
    "StepDecay",
    "one_cycle_lr",
    "one_cycle_mom",
    "one_cycle_schedules",
    "phases",
    "step_position",
    "warmup_constant",
    "warmup_cosine",
]
