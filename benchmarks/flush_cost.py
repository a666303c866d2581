"""What a time-based flush of the run folder (`convscope train --flush-every`, RunSaver's `flush_seconds`)
costs against a training step, and so what flushing every few seconds costs a run.

    python benchmarks/flush_cost.py [--repeats 3] [--bs 512] [--epochs 1] [--every 4]

The book recipe as `convscope train` runs it (simple_cnn with BatchNorm, fit_one_cycle(1, 0.06) on real
MNIST at bs 512, the default statistics `ActivationStats()`, a RunSaver writing the run folder), in one
process. Every `every`-th step the flush `convscope view` relies on (steps.npz, metrics.jsonl and stats.npz,
each written atomically: temporary file, fsync, rename) is timed on its own, right after the step; the steps
are timed without the flushes. Flushing more often than the default 5 s only makes the flush cost more
visible: the statistics (the largest file) grow with the run, so the flushes late in the epoch are the
expensive ones, and the median and the worst are both printed.

Last line: `flush_cost flush_ms=<median> flush_max_ms=<worst> step_ms=<median> flush_per_step=<ratio>
overhead_at_5s=<share of training time at one flush per 5 s>`, each the median over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA  # noqa: E402 -- the scripts share it from their own folder

from convscope.data import load_dataset  # noqa: E402
from convscope.data.batches import DeviceBatches, normalize_images  # noqa: E402
from convscope.models import simple_cnn  # noqa: E402
from convscope.stats import ActivationStats  # noqa: E402
from convscope.train import Learner  # noqa: E402
from convscope.train.callback import Callback  # noqa: E402
from convscope.train.run_saver import RunSaver  # noqa: E402


class _Clock(Callback):
    """Times each training step (before_batch to after_batch, RunSaver's own work excluded: it has no timed
    flush here) and, every `every` steps, one flush right after the step."""

    order = 95  # after RunSaver

    def __init__(self, saver: RunSaver, every: int) -> None:
        self.saver, self.every = saver, every
        self.step_s: list[float] = []
        self.flush_s: list[float] = []

    def before_batch(self) -> None:
        self._t = time.perf_counter()

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        self.step_s.append(time.perf_counter() - self._t)
        if self.learn.train_iter % self.every == 0:
            t = time.perf_counter()
            self.saver.flush()
            self.flush_s.append(time.perf_counter() - t)


def one_repeat(data, bs: int, epochs: int, every: int) -> dict[str, float]:
    x, mean, std = normalize_images(data.train_images)
    xt, _, _ = normalize_images(data.test_images, mean, std)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as run_dir:
        saver = RunSaver(Path(run_dir), {"benchmark": "flush_cost"})  # no flush of its own mid-epoch
        clock = _Clock(saver, every)
        learn = Learner(simple_cnn(), DeviceBatches(x, data.train_labels, bs, shuffle=True, drop_last=True),
                        DeviceBatches(xt, data.test_labels, 1024), cbs=[ActivationStats(), saver, clock])
        learn.fit_one_cycle(epochs, 0.06)
    steps = clock.step_s[1:]  # the first step pays one-off set-up
    flush_ms, step_ms = 1000 * statistics.median(clock.flush_s), 1000 * statistics.median(steps)
    return {"flush_ms": flush_ms, "flush_max_ms": 1000 * max(clock.flush_s), "step_ms": step_ms,
            "flush_per_step": flush_ms / step_ms, "overhead_at_5s": flush_ms / 5000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bs", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--every", type=int, default=4, help="time a flush after every N-th step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", root=DEFAULT_DATA if DEFAULT_DATA.is_dir() else None)
    rows = []
    for r in range(args.repeats):
        rows.append(one_repeat(data, args.bs, args.epochs, args.every))
        print(f"repeat {r}: " + " ".join(f"{k}={v:.4g}" for k, v in rows[-1].items()), flush=True)
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    print("flush_cost " + " ".join(f"{k}={v:.3g}" if k != "overhead_at_5s" else f"{k}={100 * v:.2f}%"
                                   for k, v in med.items()))


if __name__ == "__main__":
    main()
