"""LiveFindings: the diagnosis rules run while the model trains, so a finding appears at the step it
becomes true, and a run whose outcome is already decided can stop there (`--stop-on high`).

Every `every` optimizer steps the callback gives the rules what the learner holds in memory -- the
recorder's per-step losses and the ActivationStats rows (numpy arrays, no file read) -- as a
`diagnose.live.RunSoFar`. A finding seen for the first time is printed (above the progress bar when there
is one), findings.json in the run folder is rewritten (atomically) with the findings so far, and the step
is kept in `first_seen` (Finding.found_at). Its own cadence, not RunSaver's flush points: those come at
epoch ends only, far too late to stop a one-epoch run early. every="auto" checks every 2% of the run's steps
(at least every 4), and widens that as the checks are timed: a check costs ~2 ms on the book's CNN at the
default statistics interval and ~10 ms with 150 recorded rows (docs/fault_bench.md#cost), which against
12 ms steps (the book recipe on a fast CPU) at every 4th step would be 4% of the training time. So when a
check took more than `budget` (1%) of the time since the previous one, the interval doubles, down to no
fewer than MIN_CHECKS checks in a run.

stop_on: a severity ("high", "medium", ...): the first finding at least that severe stops training through
CancelFitException, the same path as Ctrl-C (train/interrupts.py), so RunSaver writes the checkpoint and
every file; `stopped_by` holds the finding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from convscope.config import STOP_ON_SEVERITIES, check_whole_number
from convscope.diagnose.live import RunSoFar, diagnose_so_far
from convscope.dist.context import is_main
from convscope.errors import ConfigError
from convscope.runs.findings import SEVERITIES, Finding, save_findings
from convscope.stats.activations import ActivationStats
from convscope.train.callback import Callback
from convscope.train.events import CancelFitException

AUTO_SHARE = 0.02  # every="auto": one check per 2% of the run's steps ...
MIN_EVERY = 4  # ... but not more often than every 4 steps ...
CHECK_BUDGET = 0.01  # ... and widened while a check costs more than 1% of the training time since the last
MIN_CHECKS = 8  # ... but never to fewer than 8 checks in a run (a finding can stop a run at most 1/8 late)


def check_stop_on(stop_on: object) -> str | None:
    """None, or a severity name that asks for a change (an 'info' finding never stops a run)."""
    if stop_on is not None and stop_on not in STOP_ON_SEVERITIES:
        raise ConfigError(f"stop_on must be one of {', '.join(STOP_ON_SEVERITIES)} (stop at the first finding at "
                          f"least that severe), got {stop_on!r}")
    return stop_on  # type: ignore[return-value]


def finding_key(f: Finding) -> str:
    """Findings are the same finding while the rule is: its layer and numbers may change as the run goes."""
    return f.rule


class LiveFindings(Callback):
    order = 990  # after every callback that records the step (Recorder, ActivationStats), before GracefulStop

    def __init__(self, config: dict[str, Any] | None = None, run_dir: str | Path | None = None,
                 every: int | str = "auto", stop_on: str | None = None,
                 say: Callable[[str], None] | None = None, budget: float | None = CHECK_BUDGET) -> None:
        """budget: with every="auto", the share of training time the checks may take (None: every 2% of the
        steps whatever they cost, as benchmarks/fault_bench.py measures)."""
        if every != "auto":
            check_whole_number("every", every, note="steps between checks, or 'auto'")
        self.config = dict(config or {})
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.every, self.stop_on, self.say, self.budget = every, check_stop_on(stop_on), say, budget
        self.first_seen: dict[str, int] = {}  # rule -> the step it was first true at
        self.findings: list[Finding] = []  # the latest check's findings, with found_at
        self.stopped_by: Finding | None = None
        self.checks = 0

    def before_fit(self) -> None:
        total = self.learn.total_steps
        self._every = max(MIN_EVERY, round(total * AUTO_SHARE)) if self.every == "auto" else int(self.every)
        self._widest = max(self._every, total // MIN_CHECKS)
        self._stats = next((cb for cb in self.learn.cbs if isinstance(cb, ActivationStats)), None)
        self._since: float | None = None  # when the previous check ended (or the fit's first step began)

    def before_batch(self) -> None:
        if self._since is None and self.learn.training:
            self._since = time.perf_counter()

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training or learn.train_iter % self._every:
            return
        began = time.perf_counter()
        self.check()
        ended = time.perf_counter()
        if self.every == "auto" and self.budget is not None and self._since is not None:
            # Widen (keeping the checks on multiples of the interval) while this check cost more than the
            # budget's share of the training time since the last one.
            trained = began - self._since
            while ended - began > self.budget * trained and self._every * 2 <= self._widest:
                self._every *= 2
                trained *= 2
        self._since = ended

    def check(self) -> list[Finding]:
        """Diagnose what is recorded now; report new findings; stop if one is severe enough."""
        learn = self.learn
        learn.recorder.flush_pending()  # the losses still on the device (one host read; all ranks alike)
        stats = self._stats.data if self._stats is not None and self._stats.collector is not None else None
        run = RunSoFar(self.config, list(learn.recorder.epochs), learn.recorder.step_arrays(),
                       stats if stats is not None and stats.n_steps else None,
                       progress=learn.train_iter / max(1, learn.total_steps))
        step = learn.train_iter
        found = diagnose_so_far(run)
        self.checks += 1
        new = [f for f in found if finding_key(f) not in self.first_seen]
        for f in new:
            self.first_seen[finding_key(f)] = step
        self.findings = [replace(f, found_at=self.first_seen[finding_key(f)]) for f in found]
        if new and is_main():
            if self.run_dir is not None:
                save_findings(self.run_dir, self.findings)
            if self.say is not None:
                for f in new:
                    where = f" in {f.layer}" if f.layer else ""
                    self.say(f"step {step}: [{f.severity}] {f.rule}{where}: {f.evidence}")
        if self.stop_on is not None:
            limit = SEVERITIES.index(self.stop_on)
            severe = [f for f in self.findings if SEVERITIES.index(f.severity) <= limit]
            if severe:
                self.stopped_by = severe[0]
                raise CancelFitException
        return self.findings

    def found_at(self, findings: list[Finding]) -> list[Finding]:
        """`findings` (the diagnosis after training) with the step each was first seen while training."""
        return [replace(f, found_at=self.first_seen.get(finding_key(f), f.found_at)) for f in findings]
