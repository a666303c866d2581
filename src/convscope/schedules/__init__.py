"""Learning-rate and momentum schedules (pure curves) and the callback that applies them."""

from .curves import (
    Constant,
    Cosine,
    Curve,
    Exponential,
    Linear,
    Phases,
    StepDecay,
    one_cycle_lr,
    one_cycle_mom,
    phases,
    warmup_constant,
    warmup_cosine,
)
from .scheduler import ParamScheduler, one_cycle_schedules, step_position

__all__ = [
    "Constant",
    "Cosine",
    "Curve",
    "Exponential",
    "Linear",
    "ParamScheduler",
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
