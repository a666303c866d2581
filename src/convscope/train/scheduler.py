"""ParamScheduler: drive optimizer hyper-parameters ('lr', 'mom', 'wd') from curves, every step.

The curves themselves are pure functions of the position in training (convscope.schedules)."""

from __future__ import annotations

from convscope.schedules.curves import Curve, step_position
from convscope.train.callback import Callback


class ParamScheduler(Callback):
    """Before each training batch, set each named hyper-parameter to `curve(pos)`."""

    order = 10

    def __init__(self, scheds: dict[str, Curve]) -> None:
        self.scheds = dict(scheds)

    def before_fit(self) -> None:
        self.total_steps = self.learn.total_steps

    def before_batch(self) -> None:
        if not self.learn.training:
            return
        step = self.learn.epoch * self.learn.n_iter + self.learn.iter
        pos = step_position(step, self.total_steps)
        for name, curve in self.scheds.items():
            self.learn.set_hyper(name, curve(pos))
