"""A run folder as JSON for the browser: what `convscope view` serves and `convscope compare` inlines.

Everything is read from the run's files (config.json, metrics.jsonl, steps.npz, stats.npz, findings.json)
with the checked readers of `convscope.runs`; nothing here writes. A run being trained is read while
RunSaver replaces its files: each file is whole (atomic renames), but two files read one after the other
can be one flush apart, so the browser never assumes that stats.npz and steps.npz end at the same step.

Incremental reads: the browser sends how many step rows it has and how many statistics rows with the step
of its last one; the answer holds only the rows after those, or everything again (`append: false`) when
the file no longer starts the same way (statistics rows thinned out, a resumed run's rows dropped).
JSON has no NaN: non-finite numbers are null ("no value", as the report draws them: a gap).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convscope.errors import RunError
from convscope.runs.discover import study_kind
from convscope.runs.findings import load_findings
from convscope.runs.stats_data import ActivationStatsData
from convscope.runs.store import read_json, read_jsonl, read_npz

# The per-layer series drawn as curves, in the order the page shows them, with what each is.
LAYER_SERIES = {
    "mean": "mean",
    "std": "standard deviation",
    "near_zero": "share of activations <= 0.05 (fastai's near zero: every negative value counts)",
    "negative": "share of activations < 0 (what a ReLU after the layer zeroes)",
    "abs_near_zero": "share of activations with |x| <= 0.05 (actually near zero)",
    "dead": "share of dead channels (<= 0 for the whole batch)",
    "grad_norm": "gradient norm of the layer's parameters",
    "update_ratio": "update / weight ratio per step",
}
STEP_SERIES = ("step", "epoch", "loss", "lr", "mom")
# Config keys shown as a run's one-line description (the rest is in the comparison's table).
SUMMARY_KEYS = ("dataset", "model", "bn", "schedule", "lr", "bs", "epochs", "seed", "recipe", "source")


def finite_list(array: np.ndarray, digits: int = 6) -> list[Any]:
    """A numeric array as nested lists with non-finite values as None, rounded to `digits` significant
    digits (the browser draws them; float32 noise past that only makes the JSON longer)."""
    a = np.asarray(array, dtype=np.float64)
    if a.size == 0:
        return np.zeros(a.shape).tolist()
    out = np.empty(a.shape, dtype=object)
    finite = np.isfinite(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(finite & (a != 0), np.floor(np.log10(np.abs(np.where(finite & (a != 0), a, 1.0)))), 0)
        factor = 10.0 ** (digits - 1 - scale)
        rounded = np.round(np.where(finite, a, 0.0) * factor) / factor
    out[finite] = rounded[finite]
    out[~finite] = None
    return out.tolist()


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (json.dumps(allow_nan=False) then accepts it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return json_safe(obj.item())
    return obj


# --------------------------------------------------------------------------- cached file reads


@dataclass
class _Cached:
    key: tuple[int, int]  # (mtime_ns, size): a replaced file (atomic rename) has a new one
    value: Any


class FileCache:
    """Parsed files, kept while their (mtime, size) stay the same: a poll of a run that has not flushed since
    reads nothing but four stat() calls. Shared by the server's threads."""

    def __init__(self, allowed: Callable[[Path], bool] | None = None) -> None:
        self._items: dict[tuple[Path, str], _Cached] = {}
        self._lock = threading.Lock()
        self.allowed = allowed  # a file for which it says False reads as missing (the server: outside its folders)

    def get(self, path: Path, kind: str, read: Callable[[Path], Any]) -> Any:
        """`read(path)`, or the value it gave when the file was last read and has not been replaced since;
        None for a missing file (or one `allowed` refuses)."""
        if self.allowed is not None and path.exists() and not self.allowed(path):
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._items.get((path, kind))
        if hit is not None and hit.key == key:
            return hit.value
        value = read(path)
        with self._lock:
            self._items[(path, kind)] = _Cached(key, value)
        return value


def file_version(run_dir: Path) -> str:
    """Changes whenever one of the files the page shows is replaced."""
    parts = []
    for name in ("config.json", "metrics.jsonl", "steps.npz", "stats.npz", "findings.json"):
        try:
            st = os.stat(run_dir / name)
            parts.append(f"{st.st_mtime_ns}-{st.st_size}")
        except FileNotFoundError:
            parts.append("-")
    return ".".join(parts)


# --------------------------------------------------------------------------- one run as JSON


def _findings(run_dir: Path) -> list[dict[str, Any]]:
    if not (run_dir / "findings.json").exists():
        return []
    return [f.to_dict() for f in load_findings(run_dir)]


def _stats(run_dir: Path) -> ActivationStatsData | None:
    return ActivationStatsData.load(run_dir / "stats.npz") if (run_dir / "stats.npz").exists() else None


def _resume_at(steps: np.ndarray, have: int, last: int | None) -> int:
    """Where the rows the browser lacks start: `have` when its rows still end at step `last`, else 0."""
    if have <= 0 or last is None or have > len(steps) or int(steps[have - 1]) != last:
        return 0
    return have


def describe(config: dict[str, Any]) -> str:
    """One line of the settings that tell runs apart at a glance."""
    return " ".join(f"{k}={config[k]}" for k in SUMMARY_KEYS if config.get(k) not in (None, ""))


def run_json(run_dir: Path, *, steps_have: int = 0, rows_have: int = 0, rows_last: int | None = None,
             cache: FileCache | None = None, run_id: str = "", name: str = "") -> dict[str, Any]:
    """The run as the page draws it: config, epochs, the step rows after `steps_have`, the statistics rows
    after the first `rows_have` (when they still end at step `rows_last`), findings. No histograms: those
    go one layer at a time (`hist_json`), being most of the file."""
    cache = cache or FileCache()
    config = cache.get(run_dir / "config.json", "json", read_json) or {}
    if not isinstance(config, dict):
        raise RunError(f"{run_dir / 'config.json'} is not a JSON object of settings; the run folder is damaged")
    metrics = cache.get(run_dir / "metrics.jsonl", "jsonl", read_jsonl) or []
    steps = cache.get(run_dir / "steps.npz", "npz", read_npz) or {}
    n_steps = len(steps.get("step", ()))
    start = steps_have if 0 <= steps_have <= n_steps else 0
    out: dict[str, Any] = {
        "id": run_id, "name": name or run_dir.name, "version": file_version(run_dir),
        "description": describe(config), "config": json_safe(config), "metrics": json_safe(metrics),
        "steps": {"start": start, "n": n_steps,
                  **{k: finite_list(steps[k][start:]) for k in STEP_SERIES if k in steps}},
        "findings": json_safe(cache.get(run_dir / "findings.json", "findings", lambda p: _findings(p.parent)) or []),
        "stats": None,
    }
    stats = cache.get(run_dir / "stats.npz", "stats", lambda p: _stats(p.parent))
    if stats is not None:
        at = _resume_at(stats.steps, rows_have, rows_last)
        out["stats"] = {
            "append": at > 0, "start": at, "n": stats.n_steps, "layers": stats.layers, "kinds": stats.kinds,
            "every": stats.every, "bins": stats.bins, "steps": stats.steps[at:].tolist(),
            **{k: finite_list(_series(stats, k)[at:]) for k in LAYER_SERIES},
            "ran": stats.ran[at:].astype(int).tolist(),
        }
    return out


def _series(stats: ActivationStatsData, name: str) -> np.ndarray:
    """One [steps, layers] series; NaN (drawn as a gap) for one a run written by an older version lacks."""
    values = getattr(stats, name)
    return np.full(stats.mean.shape, np.nan) if values is None else values


def hist_json(run_dir: Path, layer: str, *, rows_have: int = 0, rows_last: int | None = None,
              cache: FileCache | None = None, max_rows: int | None = None) -> dict[str, Any]:
    """One layer's histograms (the colorful dimension), rows after the first `rows_have` as in `run_json`.
    `max_rows`: keep at most that many rows, evenly spaced (the comparison page, which inlines them all)."""
    cache = cache or FileCache()
    stats = cache.get(run_dir / "stats.npz", "stats", lambda p: _stats(p.parent))
    if stats is None:
        raise RunError(f"{run_dir} has no stats.npz: train with ActivationStats to record statistics")
    i = stats.index(layer)
    at = _resume_at(stats.steps, rows_have, rows_last)
    rows = np.arange(at, stats.n_steps)
    if max_rows is not None and len(rows) > max_rows:
        rows = rows[np.unique(np.linspace(0, len(rows) - 1, max_rows).round().astype(int))]
    hist = stats.hist[rows, i] if stats.bins else np.zeros((len(rows), 0))
    return {"layer": stats.layers[i], "append": at > 0, "start": at, "n": stats.n_steps,
            "range": finite_list(stats.hist_range[i]), "bins": stats.bins,
            "steps": stats.steps[rows].tolist(), "hist": finite_list(hist, digits=4)}


def study_of(run_dir: Path) -> str | None:
    """'lr-study' or 'bs-sweep' when the run is one of a study's runs."""
    return study_kind(run_dir.parent)
