"""Scope: convscope's statistics in a fastai `Learner.fit` / `fit_one_cycle`, written as a convscope run folder.

    from convscope.integrations.fastai import Scope
    learn = Learner(dls, model, metrics=accuracy, cbs=Scope("runs/fa"))
    learn.fit_one_cycle(1, 0.06)
    convscope report runs/fa            # or learn.scope.data / convscope.load_run("runs/fa")

The fastai book's own ActivationStats reads every statistic back to the host at every batch; this one keeps
them on the device (stats/buffer.py) and adds gradient norms, update ratios and the run folder that
`convscope report` and `convscope diagnose` read. How fastai's loop maps onto a convscope step:
- One step is one batch of fastai's training loop; its row is opened by the batch's forward pass
  (validation runs in eval mode without autograd and is not recorded, as in watch()).
- Gradient norms and update ratios are read in `after_step`, after the optimizer step. With fastai's
  mixed precision (`learn.to_fp16()`) the GradScaler is handed to watch(), so the norms are of the
  unscaled gradients whatever the order of the callbacks (watch()'s rules, stats/watch.py). A step the
  scaler skipped is still a step (its update ratio is 0).
- steps.npz: loss (fastai's `learn.loss`, unsmoothed), lr and mom of the last parameter group, epoch.
- metrics.jsonl: one row per epoch with fastai's Recorder columns under fastai's names (`train_loss` is
  fastai's smoothed loss, `valid_loss`, and each metric, e.g. `accuracy`), which are the names the report and
  the diagnosis read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastai
import torch
from fastai.callback.core import Callback
from fastai.learner import Recorder

from convscope.runs.stats_data import ActivationStatsData
from convscope.stats.watch import Watch


class Scope(Callback):
    order = Recorder.order + 1  # after the Recorder has closed the epoch's values

    def __init__(self, run_dir: str | Path, **watch_kwargs: Any) -> None:
        """`watch_kwargs` are `convscope.watch`'s settings (every, sample, with_hist, bins, modules, ...)."""
        self.run_dir = Path(run_dir)
        self.watch_kwargs = watch_kwargs
        self.watch: Watch | None = None

    @property
    def data(self) -> ActivationStatsData:
        if self.watch is None:
            raise RuntimeError("Scope has recorded nothing yet: call learn.fit first")
        return self.watch.data

    def before_fit(self) -> None:
        if self.watch is not None:
            raise RuntimeError(f"this Scope already recorded a fit into {self.run_dir}; give the next fit a new "
                               "Scope with another run_dir")
        config = {"source": "fastai", "model": type(self.learn.model).__name__,
                  "n_epoch": getattr(self.learn, "n_epoch", None), "versions": {"fastai": fastai.__version__}}
        self.watch = Watch(self.learn.model, self.run_dir, config=config, scaler=getattr(self.learn, "scaler", None),
                           **self.watch_kwargs)
        self.watch.__enter__()

    def after_step(self) -> None:
        hypers = self.learn.opt.hypers[-1]
        values: dict[str, Any] = {"epoch": self.learn.epoch, "lr": hypers.get("lr", float("nan"))}
        if "mom" in hypers:
            values["mom"] = hypers["mom"]
        loss = self.learn.loss
        self.watch.step(loss.detach().float() if isinstance(loss, torch.Tensor) else loss, **values)

    def after_epoch(self) -> None:
        recorder = self.learn.recorder
        row: dict[str, Any] = {"epoch": self.learn.epoch}
        if recorder.values:
            # metric_names is ['epoch', 'train_loss', 'valid_loss', *metrics, 'time']; values lack epoch and time
            row.update({name: float(v) for name, v in zip(recorder.metric_names[1:], recorder.values[-1])
                        if v is not None})
        self.watch.log(**row)

    def after_cancel_fit(self) -> None:
        self._close()

    def after_fit(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.watch is not None and self.watch.collector.hooks is not None:
            self.watch.close()
