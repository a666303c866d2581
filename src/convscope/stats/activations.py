"""ActivationStats: the Learner callback that records per-layer statistics while training.

    learn = Learner(model, train, valid, cbs=[ActivationStats()])
    learn.fit_one_cycle(1, 0.06)
    learn.activation_stats.mean          # [recorded steps, layers]
    learn.activation_stats.color_dim("conv1.bn")

Only training batches are recorded (hooks on during validation cost time and mix in eval-mode
numbers), and within them only training forward passes (module.training, grad enabled, not inference
mode): the same rules as `watch()`, listed in stats/collector.py. `ran`, `frozen` and `unseen` say
where a NaN means "did not run" or "frozen", and what the hooks could not see (activations applied as
functions, layers that never ran).

Hooks are put on in `before_fit` and always removed in `after_fit`, which the Learner runs even when
training raises or is interrupted.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from convscope.dist.context import is_main
from convscope.runs.stats_data import ActivationStatsData
from convscope.stats.collector import HistRange, StatsCollector, check_settings
from convscope.stats.interval import AUTO, DEFAULT_BUDGET
from convscope.train.callback import Callback, ResumePoint

STATS_FILE = "stats.npz"
# Defaults: rows from 64 items of the batch (the sampling error: tests/stats/test_sampling.py), at an
# interval that keeps their cost within DEFAULT_BUDGET of training time on the machine at hand (interval.py;
# benchmarks/model_overhead.py and paired_speed.py measure it).
DEFAULT_EVERY = AUTO
DEFAULT_SAMPLE = 64


class ActivationStats(Callback):
    """Per recorded step and watched layer: mean, std, near-zero share, dead channels, histogram, and
    the layer's gradient norm and update/weight ratio.

    every:      record one training step in `every`; "auto" (the default): every 4th step at first, then,
                from the time the first 24 steps took, the widest interval among 4, 8, ..., 64 needed to
                keep the rows' cost within `budget` of the training time (stats/interval.py; pass an
                integer where two runs' rows must match exactly).
    budget:     the share of training time the rows may take under every="auto" (default 0.01: with the
                calibration window and the per-step bookkeeping, ~2% in all).
    sample:     compute each recorded row on the first `sample` items of the batch (None: all of them).
                `every=1, sample=None` records exact statistics at every step. The sampling error of the
                defaults is measured in tests/stats/test_sampling.py.
    with_hist:  also record histograms (`bins` bins over `hist_range`: 'auto' = [0, 10] after a ReLU-like
                activation, an activation's own bounds where it has them ([0, 1] for a sigmoid or softmax,
                [-1, 1] for a tanh) and [-5, 5] elsewhere, so a conv's negative half shows; (0, 10) = fastai's
                range for every layer; 'signed' = (-10, 10); 'adaptive' = per-layer range fixed from
                the first recorded batch).
    modules:    None = every leaf module with parameters plus activation modules; or name patterns,
                module types or modules.
    max_rows:   bound on the rows kept; past it the rows are thinned evenly (see stats/buffer.py).
    """

    order = -20  # open the row before other callbacks run their before_batch

    def __init__(self, every: int | str = DEFAULT_EVERY, with_hist: bool = True, bins: int = 40,
                 hist_range: HistRange = "auto", modules: Iterable[Any] | str | None = None,
                 max_rows: int = 2048, grad_stats: bool = True, sample: int | None = DEFAULT_SAMPLE,
                 budget: float = DEFAULT_BUDGET) -> None:
        check_settings(every, bins, hist_range, budget)
        self.settings = dict(every=every, with_hist=with_hist, bins=bins, hist_range=hist_range, modules=modules,
                             max_rows=max_rows, grad_stats=grad_stats, sample=sample, budget=budget)
        self.collector: StatsCollector | None = None
        self._data: ActivationStatsData | None = None

    # ----------------------------------------------------------------- events
    def before_fit(self) -> None:
        if self.collector is None or self.collector.model is not self.learn.model:
            self.collector = StatsCollector(self.learn.model, **self.settings)
        self.collector.attach()
        self._data = None

    def before_batch(self) -> None:
        self.collector.begin_step(self.learn.train_iter, self.learn.training)

    def after_backward(self) -> None:
        self.collector.after_backward()

    def before_step(self) -> None:
        self.collector.before_update()

    def after_step(self) -> None:
        self.collector.after_update()

    def after_batch(self) -> None:
        self.collector.end_step()

    def after_epoch(self) -> None:
        self.collector.flush()

    def after_fit(self) -> None:
        if self.collector is not None:
            self.collector.detach()
            if self.collector.across_ranks and self.learn.exception is not None:
                # Flushing would all-reduce with ranks that may have died: keep the rows combined so far.
                self.collector.drop_pending()
            self.collector.flush()
        self._data = None

    # ----------------------------------------------------------------- results
    @property
    def data(self) -> ActivationStatsData:
        if self.collector is None:
            raise RuntimeError("ActivationStats has recorded nothing yet: fit the learner first")
        if self._data is None or self._data.n_steps != self.collector.buffer.n_rows + len(
                self.collector.buffer.block_steps):
            self._data = self.collector.data()
        return self._data

    def resume_from_run(self, run_dir: Path, at: ResumePoint) -> None:
        """Continue the statistics of a resumed run: keep the rows recorded before the checkpoint."""
        path = Path(run_dir) / STATS_FILE
        if path.exists():
            self.collector.restore(ActivationStatsData.load(path), before_step=at.train_iter)

    def save_to_run(self, run_dir: str | Path) -> None:
        """Write stats.npz into a run folder (RunSaver calls this at every flush point)."""
        if self.collector is not None:
            data = self.data  # under torch.distributed every rank gets here: the flush combines ranks
            if is_main():
                data.save(Path(run_dir) / STATS_FILE)

    # Same API as ActivationStatsData (and so as load_run(...).activation_stats).
    layers = property(lambda self: self.data.layers)
    steps = property(lambda self: self.data.steps)
    mean = property(lambda self: self.data.mean)
    std = property(lambda self: self.data.std)
    near_zero = property(lambda self: self.data.near_zero)
    dead = property(lambda self: self.data.dead)
    hist = property(lambda self: self.data.hist)
    hist_range = property(lambda self: self.data.hist_range)
    grad_norm = property(lambda self: self.data.grad_norm)
    update_ratio = property(lambda self: self.data.update_ratio)
    ran = property(lambda self: self.data.ran)
    frozen = property(lambda self: self.data.frozen)
    unseen = property(lambda self: self.data.unseen)
    never_ran = property(lambda self: self.data.never_ran)

    def layer(self, layer: str | int) -> dict[str, np.ndarray]:
        return self.data.layer(layer)

    def to_dict(self) -> dict[str, Any]:
        return self.data.to_dict()

    def plot_layer_stats(self, layer: str | int):
        return self.data.plot_layer_stats(layer)

    def color_dim(self, layer: str | int):
        return self.data.color_dim(layer)

    def plot_dead(self, layer: str | int):
        return self.data.plot_dead(layer)
