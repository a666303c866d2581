"""RunSaver's time-based flush (`flush_seconds`, `convscope train --flush-every`): the run folder is written
while an epoch runs, every file describing the same moment, and nothing is flushed when it is off."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from convscope.data.batches import DeviceBatches
from convscope.errors import ConfigError
from convscope.models import simple_cnn
from convscope.runs.stats_data import ActivationStatsData
from convscope.runs.store import read_jsonl, read_npz
from convscope.stats import ActivationStats
from convscope.train import Learner
from convscope.train.callback import Callback
from convscope.train.run_saver import RunSaver

EVERY, BS, N = 2, 128, 1024  # 8 steps in an epoch, statistics every 2nd step


class Looker(Callback):
    """After RunSaver (order 90) at every training batch: reads the run folder back whenever a file was
    replaced, and keeps what it saw beside the number of batches it counted itself."""

    order = 95

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.batches, self.seen, self._stamp = run_dir, 0, [], None

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        self.batches += 1
        files = [self.run_dir / n for n in ("steps.npz", "stats.npz", "metrics.jsonl")]
        stamp = tuple(os.stat(f).st_mtime_ns if f.exists() else None for f in files)
        if stamp != self._stamp and files[0].exists():
            self._stamp = stamp
            self.seen.append((self.batches, self.learn.epoch, read_npz(files[0]),
                              ActivationStatsData.load(files[1]), read_jsonl(files[2])))


def fit(mnist_tensors, run_dir: Path, flush_seconds: float | None, epochs: int = 2) -> Looker:
    x, y, _, _ = mnist_tensors
    torch.manual_seed(0)
    looker = Looker(run_dir)
    saver = RunSaver(run_dir, {"note": "flush test"}, flush_seconds=flush_seconds)
    learn = Learner(simple_cnn(), DeviceBatches(x[:N], y[:N], BS, shuffle=True, drop_last=True),
                    DeviceBatches(x[-512:], y[-512:], 256), cbs=[ActivationStats(every=EVERY), saver, looker])
    learn.fit_one_cycle(epochs, 0.06)
    return looker


def test_files_flush_mid_epoch_and_agree_with_each_other(mnist_tensors, tmp_path):
    looker = fit(mnist_tensors, tmp_path, flush_seconds=1e-9)  # due at every batch
    per_epoch = N // BS
    mid_epoch = [s for s in looker.seen if s[0] % per_epoch]
    assert len(mid_epoch) >= per_epoch, "no flush inside an epoch"
    for batches, _, steps, stats, metrics in looker.seen:
        # one moment: every step taken so far, the statistics rows of exactly those steps, the epochs finished
        # (an epoch's last batch is flushed before its validation: that epoch is not finished yet)
        assert steps["step"].tolist() == list(range(batches))
        assert len(steps["loss"]) == len(steps["lr"]) == batches
        assert stats.steps.tolist() == list(range(0, batches, EVERY))
        assert [row["epoch"] for row in metrics] == list(range((batches - 1) // per_epoch))


def test_no_flush_inside_an_epoch_when_off(mnist_tensors, tmp_path):
    looker = fit(mnist_tensors, tmp_path, flush_seconds=None, epochs=1)
    assert [s[0] for s in looker.seen] == []  # the only flush is at the epoch's end, after its last batch


def test_a_long_interval_flushes_at_epoch_ends_only(mnist_tensors, tmp_path):
    looker = fit(mnist_tensors, tmp_path, flush_seconds=3600.0)
    per_epoch = N // BS
    # the first epoch's end flush is seen at the next epoch's first batch
    assert [s[0] for s in looker.seen] == [per_epoch + 1]
    steps = looker.seen[0][2]
    assert len(steps["step"]) == per_epoch


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "5"])
def test_bad_intervals_are_refused(bad, tmp_path):
    with pytest.raises(ConfigError, match="flush_seconds"):
        RunSaver(tmp_path, {}, flush_seconds=bad)
    assert np.asarray(list(tmp_path.iterdir())).size == 0
