"""`watch`: the same statistics in a training loop you wrote yourself.

    with convscope.watch(model, run_dir="runs/mine") as w:
        for xb, yb in data:
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            w.step(loss)          # after opt.step(), before opt.zero_grad()
            opt.zero_grad()
        w.log(epoch=0, accuracy=acc)   # optional: one metrics.jsonl row
    convscope.load_run("runs/mine").activation_stats

The run folder has the same layout as `convscope train` writes, so plots, reports and diagnosis work
on it unchanged.
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
from convscope.stats.activations import STATS_FILE
from convscope.stats.collector import HistRange, StatsCollector


class Watch:
    def __init__(self, model: nn.Module, run_dir: str | Path | None = None, every: int = 1,
                 with_hist: bool = True, bins: int = 40, hist_range: HistRange = (0.0, 10.0),
                 modules: Iterable[Any] | str | None = None, max_rows: int = 2048,
                 config: dict[str, Any] | None = None) -> None:
        self.collector = StatsCollector(model, every=every, with_hist=with_hist, bins=bins, hist_range=hist_range,
                                        modules=modules, max_rows=max_rows)
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
        self._begin()
        return self

    def _begin(self) -> None:
        if self.collector.begin_step(self.n_steps, self.model.training):
            self.collector.before_update()

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Close the current step: call once per optimizer step, after `opt.step()`, before `zero_grad()`."""
        self.collector.after_backward()
        self.collector.after_update()
        self.collector.end_step()
        if loss is not None:
            self.losses.append(loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(loss))
        self.n_steps += 1
        self._begin()

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
        self.collector.detach()
        if self.run_dir is not None:
            self.save()


def watch(model: nn.Module, run_dir: str | Path | None = None, **kwargs: Any) -> Watch:
    """Record activation and gradient statistics of `model` in any training loop (see module docstring)."""
    return Watch(model, run_dir, **kwargs)
