"""The training loop, its callback contract, and the callbacks that training itself needs: the Recorder,
the schedulers, the NaN guard, the run-folder writer, the multi-process trainer and the LR finder."""

from convscope.train.callback import Callback
from convscope.train.events import (
    EVENTS,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
)
from convscope.train.learner import OPTIMIZERS, Learner, adamw, sgd
from convscope.train.metrics import accuracy
from convscope.train.recorder import Recorder
from convscope.train.run_saver import RunSaver
from convscope.train.scheduler import ParamScheduler

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
    "ParamScheduler",
    "Recorder",
    "RunSaver",
    "accuracy",
    "adamw",
    "sgd",
]
