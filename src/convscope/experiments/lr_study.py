"""The book's three learning-rate questions, answered with data on the user's own model.

Why warm up from a low lr? Why train at a high one? Why end low? `lr_study` trains the same model from
the same initial weights on the same data order, for the same number of steps, under four schedules:

    constant-high   lr_max the whole time
    constant-low    lr_max / 25 the whole time (1cycle's starting lr)
    warmup-constant linear warm-up over the first 10%, then lr_max
    one-cycle       warm up, train high, anneal low (cosine), with momentum cycling

and records activation statistics for each, so the early-training behaviour (collapse of activations
to zero without warm-up) is measured, not described. `run_lr_study` writes each schedule's training as a
run folder inside the study folder (config.json, metrics.jsonl, steps.npz, stats.npz, as `convscope
train` writes them), so that `convscope view`, `compare`, `report` and `diagnose` take them as runs.
"""

from __future__ import annotations

import copy
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from convscope.config import TrainConfig
from convscope.data.batches import DeviceBatches
from convscope.diagnose.rules import collapse_episodes
from convscope.dist.context import refuse_under_torchrun
from convscope.dist.devices import resolve_device
from convscope.errors import ConfigError
from convscope.experiments.setup import build_batches, build_model, load_data
from convscope.plots.activations import smooth
from convscope.runs.store import atomic_write_bytes, atomic_write_json, create_run_dir
from convscope.schedules import Constant, one_cycle_schedules, warmup_constant
from convscope.stats.activations import ActivationStats
from convscope.train.learner import Learner
from convscope.train.run_saver import RunSaver
from convscope.train.scheduler import ParamScheduler

SCHEDULES = ("constant-high", "constant-low", "warmup-constant", "one-cycle")
_EARLY = 0.25  # "early training": the first quarter of the steps


def schedule_for(name: str, lr_max: float) -> dict[str, Any]:
    if name == "constant-high":
        return {"lr": Constant(lr_max)}
    if name == "constant-low":
        return {"lr": Constant(lr_max / 25)}
    if name == "warmup-constant":
        return {"lr": warmup_constant(lr_max, 0.1)}
    if name == "one-cycle":
        return one_cycle_schedules(lr_max)
    raise ConfigError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")


@dataclass
class StudyRow:
    schedule: str
    accuracy: float
    final_loss: float
    early_near_zero: float  # mean near-zero share over the first quarter, mean over non-BN layers
    peak_near_zero: float  # highest per-step mean near-zero share in the first quarter
    collapses: int  # collapse episodes (near-zero jumping above 90% from below 60%) in any layer
    lrs: np.ndarray
    losses: np.ndarray
    near_zero: np.ndarray  # per recorded step, mean over non-BN layers
    layer_near_zero: np.ndarray  # [steps, layers]: per non-BN layer
    layers: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "accuracy": self.accuracy, "final_loss": self.final_loss,
                "early_near_zero": self.early_near_zero, "peak_near_zero": self.peak_near_zero,
                "collapses": self.collapses}


# What each schedule is, in TrainConfig's own words, for the inner run folders' config.json (diagnosis
# reads "schedule" to say whether a warm-up is already there).
_CONFIG_SCHEDULE = {"constant-high": "constant", "constant-low": "constant", "warmup-constant": "warmup-constant",
                    "one-cycle": "one-cycle"}


def _run_one(name: str, cfg: TrainConfig, init: dict[str, torch.Tensor], model_fn, data,
             study_dir: Path | None = None) -> StudyRow:
    train_dl, valid_dl = data
    torch.manual_seed(cfg.seed)
    model = model_fn()
    model.load_state_dict(init)
    # A fresh generator with the same seed: every schedule sees the same batches in the same order.
    dl = DeviceBatches(train_dl.x, train_dl.y, cfg.bs, shuffle=True, drop_last=True, seed=cfg.seed)
    stats = ActivationStats(with_hist=False, every=1, sample=None)
    cbs: list = [stats]
    if study_dir is not None:  # the schedule's own run folder, flushed every few seconds for `convscope view`
        lr = cfg.lr / 25 if name == "constant-low" else cfg.lr
        config = {**cfg.to_dict(), "name": name, "lr": lr, "lr_max": cfg.lr, "schedule": _CONFIG_SCHEDULE[name],
                  "lr_study_schedule": name, "source": "convscope lr-study"}
        cbs.append(RunSaver(create_run_dir(study_dir, name), config, flush_seconds=5.0))
    learn = Learner(model, dl, valid_dl, lr=cfg.lr, wd=cfg.wd, cbs=cbs)
    learn.fit(cfg.epochs, cfg.lr, cbs=[ParamScheduler(schedule_for(name, cfg.lr))])
    stats = learn.activation_stats.data
    signal = [i for i, k in enumerate(stats.kinds) if "Norm" not in k]
    nz = stats.near_zero[:, signal].mean(axis=1)
    early = slice(0, max(1, int(len(nz) * _EARLY)))
    losses = learn.recorder.losses
    k = max(1, len(losses) // 10)
    return StudyRow(name, learn.recorder.epochs[-1]["accuracy"], float(losses[-k:].mean()),
                    float(nz[early].mean()), float(nz[early].max()),
                    max(len(collapse_episodes(stats.near_zero[:, i])) for i in signal), learn.recorder.lrs, losses, nz,
                    stats.near_zero[:, signal], [stats.layers[i] for i in signal])


def lr_study(cfg: TrainConfig, schedules: tuple[str, ...] = SCHEDULES, study_dir: Path | None = None) -> list[StudyRow]:
    """Train `cfg`'s model once per schedule from identical starts; return one row per schedule. With
    `study_dir`, each schedule's training is also written as a run folder `study_dir/<schedule>`."""
    refuse_under_torchrun("convscope lr-study")
    for name in schedules:
        schedule_for(name, cfg.lr)  # validate names before any work
    device = torch.device("cpu") if cfg.device == "auto" else torch.device(cfg.device)
    train_dl, valid_dl, info = build_batches(cfg, device)

    def model_fn():
        return build_model(cfg, info).to(device)

    torch.manual_seed(cfg.seed)
    init = copy.deepcopy(model_fn().state_dict())
    return [_run_one(name, cfg, init, model_fn, (train_dl, valid_dl), study_dir) for name in schedules]


def _plot_study(rows: list[StudyRow], title: str = "") -> Figure:
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    axes = fig.subplots(2, 2)
    # Show the layer where the schedules differ most: that is where a collapse shows.
    spread = np.ptp(np.stack([r.layer_near_zero.mean(axis=0) for r in rows]), axis=0)
    layer = int(np.argmax(spread))
    for row in rows:
        steps = np.arange(len(row.lrs))
        axes[0, 0].plot(steps, row.lrs, label=row.schedule)
        axes[0, 1].plot(steps, smooth(row.losses, 0.9), label=row.schedule)
        axes[1, 0].plot(np.arange(len(row.near_zero)), 100 * row.layer_near_zero[:, layer], label=row.schedule)
    axes[0, 0].set(title="learning rate", xlabel="step", yscale="log")
    axes[0, 1].set(title="training loss (smoothed)", xlabel="step", yscale="log")
    axes[1, 0].set(title=f"% activations near zero in {rows[0].layers[layer]} (where schedules differ most)",
                   xlabel="step", ylim=(0, 102))
    names = [r.schedule for r in rows]
    acc = [100 * r.accuracy for r in rows]
    bars = axes[1, 1].bar(names, acc, color=[f"C{i}" for i in range(len(rows))])
    axes[1, 1].bar_label(bars, labels=[f"{a:.2f}%" for a in acc])
    low = min(acc)
    axes[1, 1].set(title="test accuracy", ylim=(max(0, low - 5), 100))
    for ax in axes.flat[:3]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def _save_study(rows: list[StudyRow], cfg: TrainConfig, run_dir: Path) -> None:
    best = max(r.accuracy for r in rows)
    atomic_write_json(run_dir / "lr_study.json", {"config": cfg.to_dict(), "best_accuracy": best,
                                                  "rows": [r.to_dict() for r in rows]})
    fig = _plot_study(rows, f"same start, same data, {cfg.epochs} epoch(s), lr_max {cfg.lr}, bs {cfg.bs}, "
                           f"{'with' if cfg.bn else 'no'} BatchNorm")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(run_dir / "lr_study.png", buf.getvalue())


def run_lr_study(cfg: TrainConfig) -> tuple[Path, list[StudyRow]]:
    """What `convscope lr-study` runs: every check first (device, data, one process), then a new run folder,
    the four schedules (each a run folder inside it), and lr_study.json and lr_study.png in it."""
    resolve_device(cfg.device)
    load_data(cfg)  # fail on missing data before a folder exists
    refuse_under_torchrun("convscope lr-study")  # before the run folder is made
    run_dir = create_run_dir(cfg.out, cfg.name or time.strftime("%Y%m%d-%H%M%S") + "-lr-study")
    rows = lr_study(cfg, SCHEDULES, study_dir=run_dir)
    _save_study(rows, cfg, run_dir)
    return run_dir, rows
