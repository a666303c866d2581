"""Recorder: what happened at each step (loss, lr, momentum) and each epoch (losses, metrics, time).

Step losses are kept as device tensors and copied to the host once per epoch, so recording costs no
host-device sync in the training step. An fp16 learner's steps also get "skipped" (1: the loss scaler found
an Inf/NaN gradient and skipped that update), kept the same way.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from convscope.dist.context import all_reduce, current
from convscope.errors import RunError
from convscope.runs.store import read_jsonl, read_npz
from convscope.train.callback import Callback, ResumePoint


class Recorder(Callback):
    """Always attached to a Learner; reachable as `learn.recorder`."""

    order = 50  # after the schedulers (which set lr/mom in before_batch), before run writers

    def __init__(self) -> None:
        self.steps: dict[str, list[float]] = {"step": [], "epoch": [], "loss": [], "lr": [], "mom": []}
        self.epochs: list[dict[str, float]] = []
        self._pending_losses: list[torch.Tensor] = []
        self._pending_skipped: list[torch.Tensor] = []

    def before_fit(self) -> None:
        if self.learn.scaler is not None:
            self.steps.setdefault("skipped", [])

    def before_epoch(self) -> None:
        self._epoch_start = time.perf_counter()
        self._pending_losses = []
        self._pending_skipped = []

    def before_batch(self) -> None:
        self._step = self.learn.train_iter  # 0-based index of the optimizer step this batch makes

    def after_batch(self) -> None:
        if not self.learn.training or not hasattr(self.learn, "loss"):
            return
        learn = self.learn
        self._pending_losses.append(learn.loss.detach())
        if "skipped" in self.steps:
            skipped = learn.step_skipped
            self._pending_skipped.append(torch.zeros(1, device=learn.device) if skipped is None else skipped.reshape(1))
        self.steps["step"].append(self._step)
        self.steps["epoch"].append(learn.epoch)
        self.steps["lr"].append(learn.get_hyper("lr"))
        self.steps["mom"].append(learn.get_hyper("mom"))

    def after_train(self) -> None:
        self._flush_losses()

    def flush_pending(self) -> None:
        """Bring the step losses still on the device to the host (one sync), so that a mid-epoch save
        (checkpoint_every) writes every step it checkpoints: else a run killed after it would resume
        without those steps' losses."""
        self._flush_losses()

    def _flush_losses(self, combine: bool = True) -> None:
        if self._pending_losses:
            losses = torch.stack(self._pending_losses).float()
            world = current().world_size
            if world > 1 and combine:  # each rank saw its shard: the global batch's loss is their mean
                losses = all_reduce(losses) / world
            self.steps["loss"].extend(losses.cpu().tolist())
            self._pending_losses = []
        if self._pending_skipped:  # the same on every rank: the scaler checks the all-reduced gradients
            self.steps["skipped"].extend(torch.cat(self._pending_skipped).cpu().tolist())
            self._pending_skipped = []

    def after_epoch(self) -> None:
        self._flush_losses()
        epoch_losses = [loss for loss, ep in zip(self.steps["loss"], self.steps["epoch"]) if ep == self.learn.epoch]
        row = {
            "epoch": self.learn.epoch,
            "train_loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
            **self.learn.valid_results,
            "seconds": time.perf_counter() - self._epoch_start,
        }
        self.epochs.append(row)

    def after_fit(self) -> None:
        # A crashed or cancelled fit still keeps its step losses (after a crash under torch.distributed,
        # this rank's own: the other ranks may be gone).
        self._flush_losses(combine=self.learn.exception is None)

    def resume_from_run(self, run_dir: Path, at: ResumePoint) -> None:
        """Reload the steps and epochs recorded before the checkpoint (later rows were never confirmed)."""
        steps = read_npz(run_dir / "steps.npz")
        metrics = read_jsonl(run_dir / "metrics.jsonl")
        check_resumable_rows(run_dir, steps, metrics)
        keep = steps["step"] < at.train_iter if steps else []
        for key in self.steps:
            self.steps[key] = steps[key][keep].tolist() if steps and key in steps else []
        self.epochs = [row for row in metrics if row["epoch"] < at.epoch]

    # ----------------------------------------------------------------- views
    def step_arrays(self) -> dict[str, np.ndarray]:
        """Per-step arrays, as saved in steps.npz."""
        n = len(self.steps["loss"])  # steps whose loss reached the host
        arrays = {
            "step": np.asarray(self.steps["step"][:n], dtype=np.int64),
            "epoch": np.asarray(self.steps["epoch"][:n], dtype=np.int64),
            "loss": np.asarray(self.steps["loss"][:n], dtype=np.float32),
            "lr": np.asarray(self.steps["lr"][:n], dtype=np.float64),
            "mom": np.asarray(self.steps["mom"][:n], dtype=np.float64),
        }
        if "skipped" in self.steps:
            arrays["skipped"] = np.asarray(self.steps["skipped"][:n], dtype=np.int8)
        return arrays

    @property
    def losses(self) -> np.ndarray:
        return self.step_arrays()["loss"]

    @property
    def lrs(self) -> np.ndarray:
        return self.step_arrays()["lr"]

    @property
    def moms(self) -> np.ndarray:
        return self.step_arrays()["mom"]

    def plot_sched(self, ax=None):
        """Learning rate and momentum per step, two panels: a matplotlib Figure (made without pyplot).

        `ax`: two Axes to draw into (lr, then momentum). See `convscope.plots.schedules.plot_schedule`.
        """
        from convscope.plots.schedules import plot_schedule  # matplotlib loads only when a figure is asked for

        return plot_schedule(self.step_arrays(), ax=ax)


def check_resumable_rows(run_dir: Path, steps: dict[str, np.ndarray], metrics: list[dict]) -> None:
    """Refuse, naming the file, a steps.npz or metrics.jsonl that a resume cannot continue: the rows are
    kept by their step and epoch numbers, so those must be there, whole numbers, one per row."""
    path = Path(run_dir) / "steps.npz"
    if steps:
        step = steps.get("step")
        if step is None or step.ndim != 1 or step.dtype.kind not in "iu":
            raise RunError(f"{path} has no whole-number step array; the run folder is damaged")
        bad = [k for k, a in steps.items() if a.shape != step.shape]
        if bad:
            raise RunError(f"{path}: {bad[0]} has shape {steps[bad[0]].shape}, but step has {step.shape}; "
                           "the run folder is damaged")
    for i, row in enumerate(metrics, 1):
        epoch = row.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise RunError(f"{Path(run_dir) / 'metrics.jsonl'} row {i} has no whole number >= 0 for 'epoch'; "
                           "the run folder is damaged")
