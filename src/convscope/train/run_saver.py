"""RunSaver: the callback that writes a run directory while a Learner trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convscope.dist.context import is_main
from convscope.runs.checkpoint import save_checkpoint
from convscope.runs.store import atomic_save_npz, atomic_write_json, atomic_write_jsonl
from convscope.train.callback import Callback


class RunSaver(Callback):
    """Writes config.json at the start; metrics, steps and a checkpoint at every epoch end (and every
    `checkpoint_every` steps if set); and once more when fit stops early (an interrupt or a cancel).

    Other callbacks that own run files (ActivationStats, ...) expose `save_to_run(run_dir)`; RunSaver
    calls it at the same flush points so that every file of the run describes the same moment.
    When fit raises, files are flushed but no checkpoint is written: the last good one stays newest.

    Under torch.distributed every rank runs a RunSaver, so that the callbacks' `save_to_run` (which
    combine statistics over ranks) run at the same moments everywhere; only rank 0 writes files.
    """

    order = 90  # after the Recorder has closed the epoch

    def __init__(self, path: str | Path, config: dict[str, Any], checkpoint_every: int | None = None,
                 keep: int = 2) -> None:
        self.path = Path(path)
        self.config = config
        self.checkpoint_every, self.keep = checkpoint_every, keep
        self._position = self._saved = None  # set here too: after_fit runs even when before_fit failed
        self.writes = True

    def before_fit(self) -> None:
        self.writes = is_main()
        if self.writes:
            atomic_write_json(self.path / "config.json", self.config)
        self._position = self._saved = None

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        self._position = (self.learn.epoch, self.learn.iter + 1)  # where a resume would continue
        if self.checkpoint_every and self.learn.train_iter % self.checkpoint_every == 0:
            self.flush()
            self.save_checkpoint(*self._position)

    def after_epoch(self) -> None:
        self._position = (self.learn.epoch + 1, 0)
        self.flush()
        self.save_checkpoint(*self._position)

    def after_fit(self) -> None:
        try:
            self.flush()
        except OSError:
            if self.learn.exception is None:
                raise
            # fit already failed, most often on this same full or read-only disk: report that first error,
            # not this echo of it (the files on disk are still whole earlier versions: writes are atomic).
            return
        if self.learn.exception is None and self._position is not None and self._position != self._saved:
            self.save_checkpoint(*self._position)
        finding = getattr(self.learn.exception, "finding", None)
        if finding is not None and self.writes:
            from convscope.runs.findings import save_findings

            save_findings(self.path, [finding])

    def flush(self) -> None:
        rec = self.learn.recorder
        if self.writes:
            atomic_write_jsonl(self.path / "metrics.jsonl", rec.epochs)
            atomic_save_npz(self.path / "steps.npz", rec.step_arrays())
        for cb in self.learn.cbs:
            save = getattr(cb, "save_to_run", None)
            if callable(save):
                save(self.path)

    def save_checkpoint(self, epoch: int, next_iter: int) -> None:
        guard = getattr(self.learn, "non_finite_guard", None)
        if guard is not None and self.learn.exception is None:
            guard.check_now()  # a guard that reads its flag every N steps must not let NaN weights be saved
        if self.writes:  # weights, optimizer and data order are the same on every rank
            save_checkpoint(self.path, self.learn, epoch, next_iter, keep=self.keep)
        self._saved = (epoch, next_iter)
