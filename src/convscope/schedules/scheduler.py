"""ParamScheduler: drive optimizer hyper-parameters ('lr', 'mom', 'wd') from curves, every step."""

from __future__ import annotations

from ..train.callback import Callback
from .curves import Curve, one_cycle_lr, one_cycle_mom


def one_cycle_schedules(
    lr_max: float,
    pct_start: float = 0.25,
    div: float = 25.0,
    div_final: float = 1e5,
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
) -> dict[str, Curve]:
    return {"lr": one_cycle_lr(lr_max, pct_start, div, div_final), "mom": one_cycle_mom(moms, pct_start)}


def step_position(step: int, total_steps: int) -> float:
    """Position of 0-based `step` in a fit of `total_steps`: 0 at the first step, 1 at the last.

    With this mapping the first step uses the curve's start and the last its end, as
    torch.optim.lr_scheduler.OneCycleLR does.
    """
    return step / (total_steps - 1) if total_steps > 1 else 0.0


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
