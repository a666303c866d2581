"""`watch`: the same statistics in a training loop you wrote yourself.

    with convscope.watch(model, run_dir="runs/mine") as w:
        for epoch in range(epochs):
            model.train()
            for xb, yb in data:
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                w.step(loss)          # after opt.step(), before opt.zero_grad()
                opt.zero_grad()
            acc = evaluate(model)     # model.eval() / torch.no_grad(): not recorded
            w.log(epoch=epoch, accuracy=acc)   # optional: one metrics.jsonl row
    convscope.load_run("runs/mine").activation_stats

The run folder has the same layout as `convscope train` writes, so plots, reports and diagnosis work
on it unchanged.

The defaults are ActivationStats' (a row every 4th step, each from the first 64 items of its batch: the
cost/accuracy trade-off measured in the README); `every=1, sample=None` records every step exactly.

What is recorded (one row per `every` training steps, and no other rows):
- A step is what lies between two `w.step()` calls. Its row is opened by the step's first TRAINING
  forward pass of a watched module (module.training, grad enabled, not inference mode), never by
  `w.step()` itself; so evaluation between steps (eval mode, torch.no_grad(), inference_mode) is not
  recorded and leaves the next row alone, and a run ends with exactly one row per recorded step.
- Gradient accumulation (several forward/backward passes per `w.step()`): the activation statistics
  are those of the LAST micro-batch's forward pass (a module called several times in a step counts its
  last call, shared weights included); the gradient norm is that of the accumulated .grad as it is at
  `w.step()`.
- A module that did not run in a step (a branch not taken): NaN statistics and `ran[row, layer]`
  False. A layer whose parameters are all frozen: grad_norm and update_ratio NaN, `frozen[row, layer]`
  True; a layer with no .grad at `w.step()` (not in the loss): grad_norm NaN. Tuple/list/dict outputs:
  the statistics of their first tensor. Activations applied as functions (F.relu(conv(x))) cannot be
  hooked: `data.unseen` lists them with the module they follow (see stats/unseen.py).
- Mixed precision with a `torch.amp.GradScaler`: pass it, `watch(model, scaler=scaler)`, and gradient
  norms are those of the unscaled gradients whether `w.step()` comes after `scaler.step(opt)` (which
  unscales .grad in place) and `scaler.update()`, between them, or before `scaler.step(opt)` (then the
  norms are divided by the scale in use; update_ratio needs `w.step()` after the optimizer step).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.errors import RunError
from convscope.runs.stats_data import ActivationStatsData
from convscope.runs.store import atomic_save_npz, atomic_write_json, atomic_write_jsonl, create_run_dir
from convscope.stats.activations import DEFAULT_EVERY, DEFAULT_SAMPLE, STATS_FILE
from convscope.stats.collector import HistRange, StatsCollector


class Watch:
    def __init__(self, model: nn.Module, run_dir: str | Path | None = None, every: int = DEFAULT_EVERY,
                 with_hist: bool = True, bins: int = 40, hist_range: HistRange = (0.0, 10.0),
                 modules: Iterable[Any] | str | None = None, max_rows: int = 2048,
                 config: dict[str, Any] | None = None, scaler: Any = None, grad_stats: bool = True,
                 sample: int | None = DEFAULT_SAMPLE) -> None:
        self.collector = StatsCollector(model, every=every, with_hist=with_hist, bins=bins, hist_range=hist_range,
                                        modules=modules, max_rows=max_rows, grad_stats=grad_stats, sample=sample)
        self.collector.scaler = scaler
        self.model = model
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None and self.run_dir.exists():
            raise RunError(f"run folder {self.run_dir} already exists; choose another run_dir")
        self.config = dict(config or {})
        self.n_steps = 0
        self.losses: list[torch.Tensor] = []
        self.metrics: list[dict[str, Any]] = []

    def __enter__(self) -> Watch:
        if self.run_dir is not None:
            create_run_dir(self.run_dir.parent, self.run_dir.name)
        self.collector.attach()
        self.collector.open_on_forward(self.n_steps)
        return self

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Close the current step: call once per optimizer step, after `opt.step()`, before `zero_grad()`."""
        self.collector.after_backward()
        self.collector.after_update()
        self.collector.end_step()
        if loss is not None:
            self.losses.append(loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(loss))
        self.n_steps += 1
        self.collector.open_on_forward(self.n_steps)

    def log(self, **metrics: Any) -> None:
        """Add one row to metrics.jsonl (e.g. epoch=..., accuracy=...)."""
        self.metrics.append(metrics)
        if self.run_dir is not None:
            self.save()

    @property
    def data(self) -> ActivationStatsData:
        return self.collector.data()

    activation_stats = data

    def save(self) -> None:
        assert self.run_dir is not None
        losses = torch.stack(self.losses).cpu().numpy() if self.losses else np.zeros(0, np.float32)
        steps = {"step": np.arange(len(losses), dtype=np.int64), "loss": losses.astype(np.float32)}
        atomic_write_json(self.run_dir / "config.json", {
            **self.config, "source": "convscope.watch",
            "versions": {"torch": torch.__version__, "python": platform.python_version()}})
        atomic_write_jsonl(self.run_dir / "metrics.jsonl", self.metrics)
        atomic_save_npz(self.run_dir / "steps.npz", steps)
        self.data.save(self.run_dir / STATS_FILE)

    def __exit__(self, *exc: object) -> None:
        self.collector.abandon_row()  # a forward pass after the last w.step() is no finished step
        self.collector.detach()
        if self.run_dir is not None:
            self.save()


def watch(model: nn.Module, run_dir: str | Path | None = None, **kwargs: Any) -> Watch:
    """Record activation and gradient statistics of `model` in any training loop (see module docstring)."""
    return Watch(model, run_dir, **kwargs)
