"""RunSaver: the callback that writes a run directory while a Learner trains."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from convscope.dist.context import current, is_main
from convscope.errors import ConfigError
from convscope.runs.checkpoint import save_checkpoint
from convscope.runs.findings import save_findings
from convscope.runs.store import atomic_save_npz, atomic_write_json, atomic_write_jsonl
from convscope.train.callback import Callback
from convscope.train.guard import NonFiniteError


def check_flush_seconds(seconds: float | None) -> None:
    """None (epoch ends only) or a finite number of seconds > 0."""
    if seconds is not None and not (isinstance(seconds, (int, float)) and 0 < seconds < float("inf")):
        raise ConfigError(f"flush_seconds (--flush-every) must be a number of seconds > 0 (0 on the command line: "
                          f"at epoch ends only), got {seconds!r}")


class RunSaver(Callback):
    """Writes config.json at the start; metrics, steps and a checkpoint at every epoch end (and every
    `checkpoint_every` steps if set); and once more when fit stops early (an interrupt or a cancel).

    At the same flush points it calls every callback's `save_to_run(run_dir)` (ActivationStats writes
    stats.npz there, ...), so that every file of the run describes the same moment, and before a
    checkpoint every callback's `before_checkpoint()`. When fit raises, files are flushed but no
    checkpoint is written: the last good one stays newest; a NaN/Inf stop also writes its finding.

    Under torch.distributed every rank runs a RunSaver, so that the callbacks' `save_to_run` (which
    combine statistics over ranks) run at the same moments everywhere; only rank 0 writes files.

    `flush_seconds`: also flush (the files, not a checkpoint) after the first training batch that ends at
    least that many seconds of wall time after the previous flush, so that a reader (`convscope view`) sees
    the run while it trains. The files are the ones written at every flush point, from the same moment, each
    written atomically. One process only: under torch.distributed a flush combines statistics over ranks,
    and ranks whose clocks disagree about when would wait for each other forever, so there the files are
    flushed at epoch ends and checkpoints only. What a flush costs: docs/measurements.md#train-run-saver-flush
    (about a third of a step; every 5 s, ~0.4% of the training time).
    """

    order = 90  # after the Recorder has closed the epoch

    def __init__(self, path: str | Path, config: dict[str, Any], checkpoint_every: int | None = None,
                 keep: int = 2, flush_seconds: float | None = None) -> None:
        check_flush_seconds(flush_seconds)
        self.path = Path(path)
        self.config = config
        self.checkpoint_every, self.keep = checkpoint_every, keep
        self.flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self._saved: tuple[int, int] | None = None  # the learner's position at the newest checkpoint
        self.writes = True

    def before_fit(self) -> None:
        self.writes = is_main()
        if self.writes:
            atomic_write_json(self.path / "config.json", self.config)
        self._saved = self.learn.position  # a resumed fit starts where its checkpoint is
        self._last_flush = time.monotonic()

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        if self.checkpoint_every and self.learn.train_iter % self.checkpoint_every == 0:
            self.flush()
            self.save_checkpoint()
        elif (self.flush_seconds is not None and time.monotonic() - self._last_flush >= self.flush_seconds
              and current().world_size == 1):
            self.flush()

    def after_epoch(self) -> None:
        self.flush()
        self.save_checkpoint()

    def after_fit(self) -> None:
        try:
            self.flush()
        except OSError:
            if self.learn.exception is None:
                raise
            # fit already failed, most often on this same full or read-only disk: report that first error,
            # not this echo of it (the files on disk are still whole earlier versions: writes are atomic).
            return
        if self.learn.exception is None and self.learn.position not in (None, self._saved):
            self.save_checkpoint()
        if isinstance(self.learn.exception, NonFiniteError) and self.writes:
            save_findings(self.path, [self.learn.exception.finding])

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        rec = self.learn.recorder
        rec.flush_pending()  # every rank: under torch.distributed the losses are averaged over ranks
        if self.writes:
            atomic_write_jsonl(self.path / "metrics.jsonl", rec.epochs)
            atomic_save_npz(self.path / "steps.npz", rec.step_arrays())
        for cb in self.learn.cbs:
            cb.save_to_run(self.path)

    def save_checkpoint(self) -> None:
        """Checkpoint the learner where it stands (its `position`), unless a callback vetoes it."""
        if self.learn.exception is None:
            for cb in self.learn.cbs:
                cb.before_checkpoint()  # e.g. the NaN guard reads the flag it otherwise reads every N steps
        if self.writes:  # weights, optimizer and data order are the same on every rank
            save_checkpoint(self.path, self.learn.state_dict(), keep=self.keep)
        self._saved = self.learn.position
