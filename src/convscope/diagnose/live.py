"""Diagnosis of a run that is still training: the rules on what has been recorded so far.

`RunSoFar` has the attributes the rules read from a saved run (config, metrics, steps, activation_stats)
plus `complete=False` and `progress`, the share of the run's steps done. Each rule decides from those
what "already true" means: a rule judged on the end of the run (the loss did not fall, it diverged, the
run stopped while still learning) waits for the run to end, or for enough of it, while what cannot
change any more (a NaN loss, parameters that never move, activations collapsed for a long stretch) is
said at once. `diagnose_so_far` is what the training callback (experiments/live_findings.py) calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convscope.diagnose.rules import RULES, Rule, diagnose
from convscope.runs.findings import Finding
from convscope.runs.stats_data import ActivationStatsData


@dataclass
class RunSoFar:
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    steps: dict[str, np.ndarray]
    activation_stats: ActivationStatsData | None
    progress: float  # share of the run's optimizer steps taken, in (0, 1]
    complete: bool = False
    path: None = None  # no folder to read other files from (the noise scale is judged after training)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_stats(self) -> bool:
        return self.activation_stats is not None


def diagnose_so_far(run: RunSoFar, rules: tuple[Rule, ...] = RULES) -> list[Finding]:
    """The findings that are already true of the run so far (no 'healthy' claim: the run is not over)."""
    return [f for f in diagnose(run, rules) if f.rule != "healthy"]
