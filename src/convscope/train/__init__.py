"""The training loop, its callback contract and the Recorder."""

from .callback import Callback
from .events import (
    EVENTS,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
)
from .learner import OPTIMIZERS, Learner, adamw, sgd
from .metrics import accuracy, error_rate
from .recorder import Recorder

__all__ = [
    "EVENTS",
    "OPTIMIZERS",
    "Callback",
    "CancelBatchException",
    "CancelEpochException",
    "CancelFitException",
    "CancelTrainException",
    "CancelValidateException",
    "Learner",
    "Recorder",
    "accuracy",
    "adamw",
    "error_rate",
    "sgd",
]
