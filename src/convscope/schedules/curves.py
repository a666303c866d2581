"""Schedules as pure functions of the training position `pos` in [0, 1].

Each curve is a small frozen dataclass with `__call__(pos) -> value`, so it has a readable repr, can be
saved in a run's config and compared in tests against its closed form. `Phases` joins curves end to end;
`one_cycle_lr` and `one_cycle_mom` are built from these pieces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from convscope.errors import ConfigError


class Curve(Protocol):
    def __call__(self, pos: float) -> float: ...


@dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, pos: float) -> float:
        return self.value


@dataclass(frozen=True)
class Linear:
    start: float
    end: float

    def __call__(self, pos: float) -> float:
        return self.start + pos * (self.end - self.start)


@dataclass(frozen=True)
class Cosine:
    """Half a cosine wave from `start` to `end`: flat at both ends, steepest in the middle."""

    start: float
    end: float

    def __call__(self, pos: float) -> float:
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * pos)) / 2


@dataclass(frozen=True)
class Exponential:
    """Geometric interpolation: equal ratios per equal step (the LR finder's sweep)."""

    start: float
    end: float

    def __post_init__(self) -> None:
        if self.start <= 0 or self.end <= 0:
            raise ConfigError(f"Exponential needs positive ends, got start={self.start}, end={self.end}")

    def __call__(self, pos: float) -> float:
        return self.start * (self.end / self.start) ** pos


@dataclass(frozen=True)
class Phases:
    """Curves run one after the other; phase i takes the share `pcts[i]` of the whole."""

    pcts: tuple[float, ...]
    curves: tuple[Curve, ...]

    def __post_init__(self) -> None:
        if len(self.pcts) != len(self.curves) or not self.curves:
            raise ConfigError("Phases needs one pct per curve and at least one curve")
        if any(p <= 0 for p in self.pcts) or not math.isclose(sum(self.pcts), 1.0, abs_tol=1e-9):
            raise ConfigError(f"phase shares must be > 0 and sum to 1, got {self.pcts}")

    def __call__(self, pos: float) -> float:
        start = 0.0
        for i, (pct, curve) in enumerate(zip(self.pcts, self.curves)):
            if pos <= start + pct or i == len(self.curves) - 1:
                return curve(min(1.0, max(0.0, (pos - start) / pct)))
            start += pct
        raise AssertionError("unreachable")


def phases(pcts: Sequence[float], curves: Sequence[Curve]) -> Phases:
    return Phases(tuple(float(p) for p in pcts), tuple(curves))


def _check_pct(pct_start: float) -> None:
    if not 0 < pct_start < 1:
        raise ConfigError(f"pct_start must be in (0, 1), got {pct_start!r}")


def one_cycle_lr(lr_max: float, pct_start: float = 0.25, div: float = 25.0, div_final: float = 1e5) -> Phases:
    """Warm up from lr_max/div to lr_max over pct_start, then anneal to lr_max/div_final (cosines)."""
    _check_pct(pct_start)
    if not (div >= 1 and div_final >= 1):
        raise ConfigError(f"div and div_final must be >= 1, got div={div}, div_final={div_final}")
    return phases(
        [pct_start, 1 - pct_start],
        [Cosine(lr_max / div, lr_max), Cosine(lr_max, lr_max / div_final)],
    )


def one_cycle_mom(moms: tuple[float, float, float] = (0.95, 0.85, 0.95), pct_start: float = 0.25) -> Phases:
    """Momentum goes down while the lr goes up, then back: (high, low, high)."""
    _check_pct(pct_start)
    if len(moms) != 3 or not all(0 <= m < 1 for m in moms):
        raise ConfigError(f"moms must be three values in [0, 1), got {moms!r}")
    return phases([pct_start, 1 - pct_start], [Cosine(moms[0], moms[1]), Cosine(moms[1], moms[2])])


def warmup_cosine(lr_max: float, warmup_pct: float = 0.05, final_div: float = 1e4) -> Phases:
    """Linear warmup from 0 to lr_max, then cosine decay to lr_max/final_div."""
    _check_pct(warmup_pct)
    return phases([warmup_pct, 1 - warmup_pct], [Linear(0.0, lr_max), Cosine(lr_max, lr_max / final_div)])


def warmup_constant(lr_max: float, warmup_pct: float = 0.1) -> Phases:
    """Linear warmup from 0 to lr_max, then constant."""
    _check_pct(warmup_pct)
    return phases([warmup_pct, 1 - warmup_pct], [Linear(0.0, lr_max), Constant(lr_max)])


@dataclass(frozen=True)
class StepDecay:
    """Multiply `start` by `gamma` at each milestone (positions in (0, 1))."""

    start: float
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1

    def __call__(self, pos: float) -> float:
        return self.start * self.gamma ** sum(pos >= m for m in self.milestones)


def one_cycle_schedules(
    lr_max: float,
    pct_start: float = 0.25,
    div: float = 25.0,
    div_final: float = 1e5,
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
) -> dict[str, Curve]:
    """The 1cycle curves for ParamScheduler: lr up from lr_max/div and down to lr_max/div_final, momentum
    the other way."""
    return {"lr": one_cycle_lr(lr_max, pct_start, div, div_final), "mom": one_cycle_mom(moms, pct_start)}


def step_position(step: int, total_steps: int) -> float:
    """Position of 0-based `step` in a fit of `total_steps`: 0 at the first step, 1 at the last.

    With this mapping the first step uses the curve's start and the last its end, as
    torch.optim.lr_scheduler.OneCycleLR does.
    """
    return step / (total_steps - 1) if total_steps > 1 else 0.0
