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

The defaults are ActivationStats' (rows from the first 64 items of a batch, every 4th step at first and
then as sparse as needed, up to every 64th, to keep their cost within `budget` = 1% of the loop's time,
~2% with the calibration window counted in:
stats/interval.py); `every=1, sample=None` records every step exactly.

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
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convscope.dist.context import is_main
from convscope.errors import RunError
from convscope.runs.stats_data import ActivationStatsData
from convscope.runs.store import atomic_save_npz, atomic_write_json, atomic_write_jsonl, create_run_dir
from convscope.stats.activations import DEFAULT_EVERY, DEFAULT_SAMPLE, STATS_FILE
from convscope.stats.collector import HistRange, StatsCollector
from convscope.stats.interval import DEFAULT_BUDGET
from convscope.tensorboard.events import RunEvents, require_tensorboard

TENSORBOARD_EVERY = 50  # steps between TensorBoard writes: a step count, so every process flushes at the same one


class Watch:
    def __init__(self, model: nn.Module, run_dir: str | Path | None = None, every: int | str = DEFAULT_EVERY,
                 with_hist: bool = True, bins: int = 40, hist_range: HistRange = "auto",
                 modules: Iterable[Any] | str | None = None, max_rows: int = 2048,
                 config: dict[str, Any] | None = None, scaler: Any = None, grad_stats: bool = True,
                 sample: int | None = DEFAULT_SAMPLE, budget: float = DEFAULT_BUDGET,
                 tensorboard: str | Path | None = None) -> None:
        if tensorboard is not None:
            require_tensorboard()
        self.collector = StatsCollector(model, every=every, with_hist=with_hist, bins=bins, hist_range=hist_range,
                                        modules=modules, max_rows=max_rows, grad_stats=grad_stats, sample=sample,
                                        budget=budget)
        self.collector.scaler = scaler
        self.model = model
        self.run_dir = Path(run_dir) if run_dir is not None else None
        # Under torch.distributed every rank watches (its rows are combined with the others' when they leave
        # the device, a collective), and rank 0 alone writes the folder.
        self.writes = self.run_dir is not None and is_main()
        if self.writes and self.run_dir.exists():
            raise RunError(f"run folder {self.run_dir} already exists; choose another run_dir")
        self.config = dict(config or {})
        self.n_steps = 0
        self.per_step: list[dict[str, Any]] = []  # loss and the caller's other numbers, one dict per step
        self.metrics: list[dict[str, Any]] = []
        self._grads_taken = False
        self._warned_blind = False
        # TensorBoard event files in that folder, written every TENSORBOARD_EVERY steps, at log() and at close()
        self.events = RunEvents(tensorboard) if tensorboard is not None and is_main() else None
        self._tensorboard = tensorboard is not None

    def __enter__(self) -> Watch:
        if self.writes:
            create_run_dir(self.run_dir.parent, self.run_dir.name)
        self.collector.attach()
        self.collector.open_on_forward(self.n_steps)
        return self

    def gradients_ready(self) -> None:
        """Take the gradient norms now rather than at `step()`: for loops whose .grad is final before the
        optimizer step but gone or changed by the time `step()` can be called (a framework's hook order)."""
        self.collector.after_backward()
        self._grads_taken = True

    def step(self, loss: torch.Tensor | float | None = None, **values: torch.Tensor | float) -> None:
        """Close the current step: call once per optimizer step, after `opt.step()`, before `zero_grad()`.

        `loss` and any other per-step numbers (e.g. lr=..., epoch=...) go into steps.npz, one per step."""
        if not self._grads_taken:
            self.collector.after_backward()
        self._grads_taken = False
        self._check_seen()
        self.collector.after_update()
        self.collector.end_step()
        if loss is not None:
            values = {"loss": loss, **values}
        self.per_step.append({k: v.detach().float() if isinstance(v, torch.Tensor) else v for k, v in values.items()})
        self.n_steps += 1
        if self._tensorboard and self.n_steps % TENSORBOARD_EVERY == 0:
            self.write_events()
        self.collector.open_on_forward(self.n_steps)

    def _check_seen(self) -> None:
        """Warn once when a step that should have been recorded saw no training forward pass at all."""
        collector = self.collector
        if self._warned_blind or collector.slot >= 0 or not collector.buffer.should_record(self.n_steps):
            return
        self._warned_blind = True
        warnings.warn(
            f"watch(): step {self.n_steps} ran no training-mode forward pass of a watched module, so nothing was "
            "recorded: either the model is in eval mode (call model.train() after evaluating), or it was "
            "compiled and called before watch() (its compiled code has no hooks: create watch() before the first "
            "call, or call torch._dynamo.reset())", RuntimeWarning, stacklevel=3)

    def log(self, **metrics: Any) -> None:
        """Add one row to metrics.jsonl (e.g. epoch=..., accuracy=...)."""
        self.metrics.append(metrics)
        self.save()
        if self._tensorboard:
            self.write_events()

    @property
    def data(self) -> ActivationStatsData:
        return self.collector.data()

    activation_stats = data

    def step_arrays(self) -> dict[str, np.ndarray]:
        """steps.npz: `step` and each per-step number, NaN at the steps that did not give it."""
        keys = list(dict.fromkeys(k for row in self.per_step for k in row))
        arrays = {"step": np.arange(len(self.per_step), dtype=np.int64)}
        for key in keys:
            column = [row.get(key, float("nan")) for row in self.per_step]
            tensors = [v for v in column if isinstance(v, torch.Tensor)]
            host = iter(torch.stack(tensors).cpu().tolist()) if tensors else iter(())  # one device read
            values = [next(host) if isinstance(v, torch.Tensor) else float(v) for v in column]
            whole = key == "epoch" and not any(np.isnan(values))  # a step without an epoch leaves NaN: a float
            arrays[key] = np.asarray(values, dtype=np.int64 if whole else np.float32)
        return arrays

    def save(self) -> None:
        """Write the run folder as it stands (every rank takes part: see __init__); without run_dir, only
        bring the statistics to the host."""
        data = self.data
        if not self.writes:
            return
        assert self.run_dir is not None
        scaler = self.collector.scaler
        atomic_write_json(self.run_dir / "config.json", {
            **self.config, "source": self.config.get("source", "convscope.watch"),
            # diagnosis reads an infinite gradient norm in a loss-scaled run as a step the scaler skipped
            "loss_scaling": bool(scaler is not None and scaler.is_enabled()),
            "versions": {"torch": torch.__version__, "python": platform.python_version(),
                         **self.config.get("versions", {})}})
        atomic_write_jsonl(self.run_dir / "metrics.jsonl", self.metrics)
        atomic_save_npz(self.run_dir / "steps.npz", self.step_arrays())
        data.save(self.run_dir / STATS_FILE)

    def write_events(self) -> None:
        """Write what was recorded since the last write into the TensorBoard folder (every process takes part:
        bringing the statistics to the host combines them). Findings need a saved run: export-tensorboard."""
        data = self.data
        if self.events is None:
            return
        steps = self.step_arrays()
        self.events.add_steps(steps)
        self.events.add_stats(data)
        self.events.add_metrics(self.metrics, steps, default_step=self.n_steps - 1)
        self.events.flush()

    def close(self) -> None:
        """Remove the hooks and write the folder a last time (what leaving the `with` block does)."""
        self.collector.abandon_row()  # a forward pass after the last step() is no finished step
        self.collector.detach()
        self.save()
        if self._tensorboard:
            self.write_events()
            if self.events is not None:
                self.events.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def watch(model: nn.Module, run_dir: str | Path | None = None, **kwargs: Any) -> Watch:
    """Record activation and gradient statistics of `model` in any training loop (see module docstring)."""
    return Watch(model, run_dir, **kwargs)
