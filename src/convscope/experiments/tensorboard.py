"""TensorBoard: a Learner callback that writes a run's event files while it trains, and the export of saved runs.

    learn = Learner(model, train, valid, cbs=[ActivationStats(), TensorBoard("tb/book")])
    learn.fit_one_cycle(1, 0.06)          # tensorboard --logdir tb  shows it as it trains
    export_tensorboard(["runs/a", "runs/b"], "tb")            # tb/a, tb/b: runs already saved

What is written (convscope.tensorboard.events): train/loss, train/lr, train/momentum per step; per layer the
statistics ActivationStats records (mean/<layer>, std/, near_zero/, dead/, grad_norm/, update_ratio/) and
its histograms with their exact bins (hist/<layer>); epoch/<metric> at each epoch's end; and the findings as
a text table once the run is diagnosed.

When: every `every` optimizer steps (default 50; a step count rather than a clock, so that every process of a
distributed run brings its statistics together at the same step), at each epoch's end and at the end of fit.
Each write brings the statistics recorded so far to the host (one device sync, what ActivationStats does
every 64 rows anyway) and the step losses (Recorder.flush_pending). Rows that ActivationStats later thins
out (stats/buffer.py) stay in TensorBoard: the event files keep every row they were given.

The callback lives here, with what a command runs, because it reads both the statistics (stats/) and the
diagnosis (diagnose/); the event files themselves are made from plain arrays in convscope.tensorboard.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from convscope.diagnose import diagnose, load_findings
from convscope.diagnose.live import RunSoFar
from convscope.dist.context import is_main
from convscope.errors import ConfigError, RunError
from convscope.runs.findings import Finding
from convscope.runs.run import load_run
from convscope.stats.activations import ActivationStats
from convscope.tensorboard.events import RunEvents, check_log_dir, require_tensorboard
from convscope.train.callback import Callback, ResumePoint

__all__ = ["DEFAULT_EVERY", "TensorBoard", "export_tensorboard"]

DEFAULT_EVERY = 50  # optimizer steps between writes: ~2-10 s of the book's model on a laptop CPU


class TensorBoard(Callback):
    """Write TensorBoard event files into `log_dir` while the learner trains (see the module docstring).

    every:     optimizer steps between writes (also at each epoch's end and at the end of fit).
    findings:  diagnose the run at the end of fit and write the findings as text. `convscope train` passes
               False and writes the findings of the saved run instead (`add_findings`).
    """

    order = 60  # after the Recorder (50) has closed the epoch's metrics row

    def __init__(self, log_dir: str | Path, every: int = DEFAULT_EVERY, findings: bool = True) -> None:
        require_tensorboard()  # before training starts: a missing package must not cost a run
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"TensorBoard every must be a whole number of steps >= 1, got {every!r}")
        self.log_dir = check_log_dir(log_dir)
        self.every = every
        self.findings = findings
        self.events: RunEvents | None = None
        self._purge_step: int | None = None

    def _stats(self) -> ActivationStats | None:
        return next((cb for cb in self.learn.cbs if isinstance(cb, ActivationStats)), None)

    def resume_from_run(self, run_dir: Path, at: ResumePoint) -> None:
        """A resumed fit: what the interrupted run wrote from the resume step on is dropped by TensorBoard."""
        if self.events is not None:
            self.events.close()
            self.events = None
        self._purge_step = at.train_iter

    def _open(self) -> None:
        """The event writer, on the process that writes files."""
        if self.events is None and is_main():
            self.events = RunEvents(self.log_dir, purge_step=self._purge_step)

    def after_batch(self) -> None:
        if self.learn.training and self.learn.train_iter % self.every == 0:
            self.learn.recorder.flush_pending()  # the losses reach the host once per epoch otherwise
            self.write()

    def after_epoch(self) -> None:
        self.write()

    def after_fit(self) -> None:
        if self.learn.train_iter and self.learn.exception is None:
            self.write()
            if self.findings and self.events is not None:
                self.add_findings(diagnose(self._live_run()))
        if self.events is not None:
            self.events.close()  # a later add_findings reopens it (a new event file in the same folder)

    def write(self) -> None:
        """Write what the learner recorded since the last write (every process takes part: see above)."""
        stats_cb = self._stats()
        data = stats_cb.data if stats_cb is not None and stats_cb.collector is not None else None
        self._open()  # at the first write: a resumed fit has set its purge step by then
        if self.events is None:
            return
        steps = self.learn.recorder.step_arrays()
        self.events.add_steps(steps)
        if data is not None:
            self.events.add_stats(data)
        self.events.add_metrics(self.learn.recorder.epochs, steps)
        self.events.flush()

    def add_findings(self, findings: Iterable[Finding]) -> None:
        """The run's findings as a text table (after fit: a new event file in the same folder)."""
        if self.events is not None:
            self.events.add_findings(findings)
            self.events.close()

    def _live_run(self) -> RunSoFar:
        """What diagnose() reads of a run, taken from a learner that has no run folder: the whole run."""
        stats_cb = self._stats()
        data = stats_cb.data if stats_cb is not None and stats_cb.collector is not None else None
        return RunSoFar(config={}, metrics=list(self.learn.recorder.epochs), steps=self.learn.recorder.step_arrays(),
                        activation_stats=data, progress=1.0, complete=True)


def export_tensorboard(runs: Sequence[str | Path], log_dir: str | Path) -> list[Path]:
    """Event files for saved run folders: `log_dir/<run folder name>` for each, refusing to write into a folder
    that already holds one (a second export would double every point). Returns the folders written."""
    require_tensorboard()
    parent = check_log_dir(log_dir)
    loaded = [load_run(r) for r in runs]  # every run is read before anything is written
    names = [r.path.resolve().name for r in loaded]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise RunError(f"two runs share the folder name {twice[0]}; export them into different log folders")
    for name in names:
        target = parent / name
        if target.exists() and any(target.iterdir()):
            raise RunError(f"TensorBoard log folder {target} already exists and is not empty; choose another log "
                           "folder or remove it")
    findings = [load_findings(r.path) for r in loaded]
    stats = [r.activation_stats if r.has_stats else None for r in loaded]
    written = []
    for run, name, found, data in zip(loaded, names, findings, stats):
        events = RunEvents(parent / name)
        events.add_steps(run.steps)
        if data is not None:
            events.add_stats(data)
        events.add_metrics(run.metrics, run.steps)
        if found:
            events.add_findings(found)
        events.close()
        written.append(parent / name)
    return written
