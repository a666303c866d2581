"""load_run: open a finished (or interrupted) run in any process, without the model or a GPU."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convscope.errors import RunError
from convscope.runs.findings import Findings, load_findings
from convscope.runs.stats_data import ActivationStatsData
from convscope.runs.store import read_json, read_jsonl, read_npz


@dataclass
class Run:
    """Everything a run directory holds, as plain Python and numpy."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    steps: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def activation_stats(self) -> ActivationStatsData:
        """The recorded activation statistics (stats.npz), with the same API as `learn.activation_stats`."""
        if "activation_stats" not in self.extra:
            path = self.path / "stats.npz"
            if not path.exists():
                raise RunError(f"{self.path} has no stats.npz: train with ActivationStats to record statistics")
            self.extra["activation_stats"] = ActivationStatsData.load(path)
        return self.extra["activation_stats"]

    @property
    def findings(self) -> Findings:
        """The diagnosis saved in findings.json (empty when the run has not been diagnosed)."""
        return load_findings(self.path)

    @property
    def has_stats(self) -> bool:
        return (self.path / "stats.npz").exists()

    @property
    def final_accuracy(self) -> float | None:
        return self.metrics[-1].get("accuracy") if self.metrics else None

    def _repr_html_(self) -> str:
        """Jupyter shows a run as its settings, metrics, findings and figures (runs/display.py)."""
        from convscope.runs.display import run_html

        return run_html(self)


def load_run(path: str | Path) -> Run:
    """Read a run directory written by `convscope train` or `convscope.watch`."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run folder {path} does not exist; pass the folder that `convscope train` printed")
    config = read_json(path / "config.json")
    if not isinstance(config, dict):  # readers look settings up by name
        raise RunError(f"{path / 'config.json'} is not a JSON object of settings; the run folder is damaged")
    steps = read_npz(path / "steps.npz")
    # One number per optimizer step in every array: plots and diagnosis index them together.
    lengths = {len(a) for a in steps.values() if a.ndim == 1 and a.dtype.kind in "biuf"}
    if len(lengths) > 1 or any(a.ndim != 1 or a.dtype.kind not in "biuf" for a in steps.values()):
        shapes = ", ".join(f"{k} {a.shape} {a.dtype}" for k, a in steps.items())
        raise RunError(f"{path / 'steps.npz'} does not hold one number per step in each array ({shapes}); "
                       "the run folder is damaged")
    return Run(path=path, config=config, metrics=read_jsonl(path / "metrics.jsonl"), steps=steps)
