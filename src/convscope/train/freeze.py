"""FreezeLayers: stop training chosen layers part-way through a fit (FreezeOut, Brock et al. 2017).

    learn = Learner(model, train, valid, cbs=[FreezeLayers({"conv1": 0.5})])   # conv1 trains for the first half

Why: on a CPU the first block of the book's CNN is the dearest part of a step. Its activations are the
largest, and its backward pass (the first conv's weight gradient, its BatchNorm, and the input gradient of
conv2 that feeds them) costs about a fifth of a step. Once the first layer has settled, which it does early, a frozen
layer needs no backward pass at all: autograd skips every op whose inputs need no gradient.

A frozen layer keeps its weights and its BatchNorm keeps normalising with batch statistics (and updating
its running averages), so only the parameter updates stop. When a layer freezes is a pure function of the
step, so a resumed run freezes at the same step as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from convscope.errors import ConfigError
from convscope.train.callback import Callback


def check_freeze(model: nn.Module, schedule: Mapping[str, float]) -> dict[str, float]:
    """Validate `schedule` (layer name -> fraction of training after which it freezes) against `model`."""
    if not isinstance(schedule, Mapping):
        raise ConfigError(f"freeze must map layer names to fractions of training, got {schedule!r}")
    names = dict(model.named_modules())
    trainable = [n for n, m in model.named_children() if any(True for _ in m.parameters())]
    out = {}
    for name, at in schedule.items():
        if name not in names or not name or not any(True for _ in names[name].parameters()):
            raise ConfigError(f"freeze names {name!r}, which is not a layer with weights of this model; "
                              f"choose from {', '.join(trainable)}")
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at <= 1:
            raise ConfigError(f"freeze {name}={at!r}: the fraction of training must be in [0, 1]")
        out[name] = float(at)
    return out


class FreezeLayers(Callback):
    """Freeze each named layer (all its parameters) once `learn.pct_train` reaches its fraction.

    `frozen_at` maps each frozen layer to the step (train_iter) of its first frozen update.
    """

    order = -30  # before the statistics and the optimizer see the step

    def __init__(self, schedule: Mapping[str, float]) -> None:
        self.schedule = dict(schedule)
        self.frozen_at: dict[str, int] = {}

    def before_fit(self) -> None:
        self.schedule = check_freeze(self.learn.model, self.schedule)
        self.frozen_at = {}

    def before_batch(self) -> None:
        if not self.learn.training or len(self.frozen_at) == len(self.schedule):
            return
        pct = self.learn.pct_train
        for name, at in self.schedule.items():
            if name not in self.frozen_at and pct >= at:
                for p in self.learn.model.get_submodule(name).parameters():
                    p.requires_grad_(False)
                self.frozen_at[name] = self.learn.train_iter

    def after_fit(self) -> None:
        # The model leaves the fit trainable again, so a later fit or fine-tune starts from the usual state.
        for name in self.frozen_at:
            for p in self.learn.model.get_submodule(name).parameters():
                p.requires_grad_(True)
