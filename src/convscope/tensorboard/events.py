"""RunEvents: one run's TensorBoard event files, each row written once, in the order the run makes them.

    events = RunEvents("tb/book")
    events.add_steps(learn.recorder.step_arrays())       # train/loss, train/lr, train/momentum per step
    events.add_stats(learn.activation_stats.data)        # mean/conv1.conv, ..., hist/conv1.conv per row
    events.add_metrics(learn.recorder.epochs, steps)     # epoch/accuracy, ... at each epoch's last step
    events.add_findings(findings)                        # one text table
    events.close()

Tags are grouped by statistic (`mean/<layer>`, `dead/<layer>`, ...), so TensorBoard shows every layer of one
statistic in one section, where the layers compare. Each add_* call writes only what is newer than what it
wrote before (steps by their number), so a caller passes the whole run as it stands each time. NaN values (a
layer that did not run in that step, a frozen layer's gradient) are left out: TensorBoard would draw them as
a break at best. Histograms are written with their exact bins: the bucket limits are the bins' right edges
over the layer's recorded range, and the counts are the recorded ones (values outside the range were not
counted when recording, stats/compute.py, so they are not here either).

The files are written with torch's SummaryWriter (torch.utils.tensorboard), which needs the `tensorboard`
package: `require_tensorboard()` says so in one line when it is missing. This module reads arrays only; it
never imports the training loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from convscope.errors import ConfigError

if TYPE_CHECKING:  # the writer reads their fields; runs/ sits above this building block
    from convscope.runs.findings import Finding
    from convscope.runs.stats_data import ActivationStatsData

__all__ = ["STAT_SERIES", "RunEvents", "epoch_end_steps", "require_tensorboard"]

# The per-layer series of ActivationStatsData written as scalars, by field name (tags: "<name>/<layer>").
# abs_near_zero and negative are optional fields (None in older run folders): written when present.
STAT_SERIES = ("mean", "std", "near_zero", "abs_near_zero", "negative", "dead", "grad_norm", "update_ratio")
# steps.npz key -> tag; "momentum" is the name watch() users tend to log it under.
_STEP_TAGS = {"loss": "train/loss", "lr": "train/lr", "mom": "train/momentum", "momentum": "train/momentum"}
_INSTALL = "pip install 'convscope[tensorboard]' (or pip install tensorboard)"


def require_tensorboard() -> None:
    """ConfigError in one line when the `tensorboard` package (which torch's SummaryWriter needs) is missing or
    cannot be imported (torch.utils.tensorboard would raise a multi-line ImportError later, mid-run)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"TensorBoard is not installed ({exc}), so no event files can be written: "
                          f"{_INSTALL}") from None


def check_log_dir(log_dir: str | Path) -> Path:
    """The log folder as a Path; ConfigError when it, or a folder above it, is a file."""
    path = Path(log_dir)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise ConfigError(f"TensorBoard log folder {path}: {part} is a file, not a folder; choose another folder")
    return path


def epoch_end_steps(steps: Mapping[str, Sequence[float] | np.ndarray]) -> dict[int, int]:
    """Epoch number -> the last optimizer step of that epoch (where its metrics were measured)."""
    if "epoch" not in steps or "step" not in steps:
        return {}
    ends: dict[int, int] = {}
    for epoch, step in zip(np.asarray(steps["epoch"]).tolist(), np.asarray(steps["step"]).tolist()):
        if np.isfinite(epoch):
            ends[int(epoch)] = int(step)
    return ends


class RunEvents:
    """The event files of one run in `log_dir` (made if absent; TensorBoard lists each folder as a run).

    purge_step: a resumed run's first step; events at or after it left by the interrupted run are dropped
    by TensorBoard (SummaryWriter's purge_step), so the resumed rows replace them instead of doubling them.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        require_tensorboard()
        self.log_dir = check_log_dir(log_dir)
        from torch.utils.tensorboard import SummaryWriter  # loads tensorboard: only when events are asked for

        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        start = -1 if purge_step is None else purge_step - 1
        self.last_step = start  # the last optimizer step whose train/* scalars are written
        self.last_row = start  # the step of the last statistics row written
        self.epochs_done: set[int] = set()

    # ----------------------------------------------------------------- per step
    def add_steps(self, steps: Mapping[str, Sequence[float] | np.ndarray]) -> None:
        """train/loss, train/lr, train/momentum of the steps after the last one written. `steps` is steps.npz
        (or `Recorder.step_arrays()`); the arrays may differ in length while a run goes (losses reach the host
        later than lrs): a step is written once all its series are there."""
        numbers = np.asarray(steps.get("step", []), dtype=np.int64)
        series = {tag: np.asarray(steps[key], dtype=np.float64) for key, tag in _STEP_TAGS.items() if key in steps}
        n = min([len(numbers), *(len(v) for v in series.values())])
        new = np.flatnonzero(numbers[:n] > self.last_step)
        for k in new:
            for tag, values in series.items():
                if np.isfinite(values[k]):
                    self.writer.add_scalar(tag, float(values[k]), int(numbers[k]))
        if len(new):
            self.last_step = int(numbers[new[-1]])

    def add_stats(self, data: ActivationStatsData) -> None:
        """Every layer's statistics and histogram for the rows recorded after the last one written."""
        rows = np.flatnonzero(np.asarray(data.steps) > self.last_row)
        series = [(name, values) for name in STAT_SERIES if (values := getattr(data, name, None)) is not None]
        edges = [self._bucket_limits(data, j) for j in range(len(data.layers))]
        for r in rows:
            step = int(data.steps[r])
            for j, layer in enumerate(data.layers):
                for name, values in series:
                    value = float(values[r, j])
                    if np.isfinite(value):
                        self.writer.add_scalar(f"{name}/{layer}", value, step)
                if edges[j] is not None:
                    self._add_histogram(f"hist/{layer}", edges[j], np.asarray(data.hist[r, j], dtype=np.float64),
                                        step)
        if len(rows):
            self.last_row = int(data.steps[rows[-1]])

    @staticmethod
    def _bucket_limits(data: ActivationStatsData, j: int) -> np.ndarray | None:
        """The right edges of layer j's bins, or None without histograms (none recorded, or an adaptive range
        that was never fixed)."""
        lo, hi = (float(v) for v in data.hist_range[j])
        if data.bins == 0 or not hi > lo:
            return None
        return np.linspace(lo, hi, data.bins + 1)

    def _add_histogram(self, tag: str, edges: np.ndarray, counts: np.ndarray, step: int) -> None:
        num = float(counts.sum())
        if not np.isfinite(num) or num <= 0:  # the layer did not run, or every value fell outside the range
            return
        # sum and sum of squares from the bin centres: the recorded histogram is all that is known of the
        # values it counts (the layer's exact mean is its own scalar, over every value, in range or not).
        centres = 0.5 * (edges[:-1] + edges[1:])
        self.writer.add_histogram_raw(tag, min=float(edges[0]), max=float(edges[-1]), num=num,
                                      sum=float(centres @ counts), sum_squares=float((centres**2) @ counts),
                                      bucket_limits=edges[1:].tolist(), bucket_counts=counts.tolist(),
                                      global_step=step)

    # ----------------------------------------------------------------- per epoch, per run
    def add_metrics(self, metrics: Iterable[Mapping[str, Any]], steps: Mapping[str, Any],
                    default_step: int | None = None) -> None:
        """epoch/<name> for each number of each metrics row not written yet, at its epoch's last step (rows
        without a known epoch: `default_step`, else skipped)."""
        ends = epoch_end_steps(steps)
        for k, row in enumerate(metrics):
            epoch = row.get("epoch", k)
            if not isinstance(epoch, (int, np.integer)) or int(epoch) in self.epochs_done:
                continue
            step = ends.get(int(epoch), default_step)
            if step is None:
                continue
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and np.isfinite(value):
                    self.writer.add_scalar(f"epoch/{key}", float(value), step)
            self.epochs_done.add(int(epoch))

    def add_findings(self, findings: Iterable[Finding | Mapping[str, Any]], step: int | None = None) -> None:
        """The diagnosis as one markdown table (TensorBoard's Text tab), at `step` (default: the last step)."""
        rows = [f.to_dict() if hasattr(f, "to_dict") else dict(f) for f in findings]
        lines = ["| severity | rule | layer | steps | evidence | remedy |", "|---|---|---|---|---|---|"]
        for f in rows:
            steps = f.get("steps")
            span = f"{steps[0]} to {steps[1]}" if isinstance(steps, (list, tuple)) and len(steps) == 2 else ""
            cells = [f.get("severity", ""), f.get("rule", ""), f.get("layer") or "", span, f.get("evidence", ""),
                     f.get("remedy", "")]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        text = "\n".join(lines) if rows else "no findings"
        self.writer.add_text("findings", text, max(self.last_step, self.last_row, 0) if step is None else step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        """Write everything out. Adding more afterwards starts a new event file in the same folder."""
        self.writer.close()
