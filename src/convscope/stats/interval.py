"""`every="auto"`: the recording interval chosen from what a recorded row costs on this machine.

A recorded row costs about the same time whatever the hardware does with the rest of the step (its
element work is small and its op count fixed), so a fixed interval that costs 2% of a slow CPU's step costs
10% of a fast one's, and more again of a compiled model's. Instead, the collector starts at every
`AUTO_START`-th step, times the steps of a calibration window, and then widens the interval once:

    row cost   = median(time of a recorded step) - median(time of a step that records nothing)
    every      = the smallest AUTO_START * 2**k (<= AUTO_MAX) with  row cost / (every * step time) <= budget

A step's time is the wall time from its start (the Learner's before_batch) to its end; where the start is
not seen (watch()), from the previous step's end, data loading and anything else between steps included.
The window skips the first WARMUP steps (allocation, compilation of a compiled model's two graphs, a cold
cache) and holds WINDOW steps: 4 recorded and 12 others at the starting interval. (A window of 32 made the
same choice in 10 of 12 book runs, timed on the same steps, and records 4 rows more, ~0.2% of a 3-epoch book
run: docs/measurements.md#stats-window.) The choice is made once, when DECIDE_AT steps have ended, and never
revisited, so the rows of a run lie on one grid of multiples of `every` (the rows of the window that are off
the new grid are dropped, as when max_rows thins them). A run shorter than DECIDE_AT steps keeps the starting
interval.

What is not reproducible: the interval depends on measured time, so two runs of the same seed may keep rows
at different intervals (the values of a row kept by both are identical). A resumed run keeps the interval
its checkpoint's statistics were saved with; one resumed before the choice was made times a window of its
own, WARMUP + WINDOW steps from where it resumed (else it would record every AUTO_START-th step to its end).
Pass an integer `every` where rows must match exactly.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

AUTO = "auto"
AUTO_START = 4  # the starting interval: ActivationStats' fixed default before the interval was measured
AUTO_MAX = 64  # at most this sparse: ~15 rows in an MNIST epoch at bs 64, enough for the plots and rules
# The share of training time the rows after the window may take: 1%, so that all the statistics cost
# stays near 2% with the rest counted in: the 6 rows of the warm-up and window (at ~4 ms a row of the book
# model, about 0.3% of a 3-epoch run at bs 512) and the callbacks of every step. benchmarks/model_overhead.py,
# which leaves the window out, measured 1.00-1.015 with this budget and 1.02-1.05 with 2% (README's table).
DEFAULT_BUDGET = 0.01
WARMUP = 8
WINDOW = 16
DECIDE_AT = WARMUP + WINDOW  # the step whose end makes the choice


def choose_every(row_seconds: float, step_seconds: float, budget: float, start: int = AUTO_START,
                 most: int = AUTO_MAX) -> int:
    """The smallest start * 2**k <= most whose rows cost at most `budget` of the steps' time."""
    every = start
    while every < most and row_seconds > budget * every * step_seconds:
        every *= 2
    return every


class IntervalChooser:
    """Times the steps of the calibration window and chooses the interval at its end (see module docstring)."""

    def __init__(self, budget: float = DEFAULT_BUDGET, clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget = budget
        self.clock = clock
        self.recorded: list[float] = []
        self.other: list[float] = []
        self.last_end: float | None = None
        self.started: float | None = None
        self.done = False
        self.first: int | None = None  # the first step this process timed (> 0 in a resumed run)
        self.measured: dict[str, float] = {}  # what the choice was made from (for the run's config)

    def keep(self, measured: dict[str, float]) -> None:
        """A resumed run whose checkpoint already holds a choice: keep it, time nothing."""
        self.measured, self.done = dict(measured), True

    def step_started(self) -> None:
        if not self.done:
            self.started = self.clock()

    def step_ended(self, step: int, was_recorded: bool) -> int | None:
        """Call at the end of training step `step`; returns the chosen interval when the window ends, else None."""
        if self.done:
            return None
        if self.first is None:
            self.first = step
        at = step - self.first  # a run resumed before its choice times a window of its own from where it resumed
        now = self.clock()
        began = self.started if self.started is not None else self.last_end
        if began is not None and WARMUP <= at < DECIDE_AT:
            (self.recorded if was_recorded else self.other).append(now - began)
        self.last_end, self.started = now, None
        if at < DECIDE_AT - 1:
            return None
        self.done = True
        if len(self.recorded) < 4 or len(self.other) < 8:
            return None  # too few steps timed to choose (their starts not seen): keep the interval
        step_s = statistics.median(self.other)
        row_s = max(statistics.median(self.recorded) - step_s, 0.0)
        every = choose_every(row_s, step_s, self.budget)
        self.measured = {"row_ms": round(row_s * 1e3, 3), "step_ms": round(step_s * 1e3, 3),
                         "budget": self.budget, "every": every}
        return every
