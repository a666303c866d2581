"""Batch-size study: train the same model from the same weights at several batch sizes and compare.

Each setting runs in a fresh Python process (`python -m convscope.experiments.bs_sweep <spec>`), so its peak memory
is its own and no allocator state leaks from one setting into the next. Every setting writes its own run
folder inside the sweep folder (with noise_scale.npz beside the usual files); the sweep folder gets
bs_sweep.json (one row per setting and the recommendation) and bs_sweep.png.

The gradient noise scale is measured in every run (`GradientNoiseScale`, about 60 measurements per
run), and the time it costs is measured and taken out of the reported training time, so that the wall
times compare training alone at each batch size.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from convscope.config import TrainConfig, check_whole_number, is_whole_number
from convscope.dist.context import refuse_under_torchrun
from convscope.dist.devices import resolve_device
from convscope.errors import ConfigError, ConvscopeError, RunError
from convscope.experiments.run import run_training
from convscope.experiments.setup import build_batches, build_model, load_data
from convscope.runs.store import atomic_write_json, create_run_dir, read_npz
from convscope.stats.noise_scale import GradientNoiseScale
from convscope.train.callback import Callback
from convscope.train.guard import NonFiniteError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LR_SCALINGS = ("none", "linear", "sqrt")
_MEASUREMENTS_PER_RUN = 60  # noise-scale measurements per setting when gns_every is left to us
_ACCURACY_SLACK = 0.005  # "as good as the best": within half a percentage point of test accuracy
_FLOAT_FIELDS = ("accuracy", "valid_loss", "train_seconds", "train_cpu_seconds", "samples_per_s", "gns_seconds",
                "final_train_loss",
                "peak_mem_mb", "b_simple_end", "b_simple_early", "b_simple_late")


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'64,128, 256' -> (64, 128, 256); anything else is a ConfigError that quotes the input."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ConfigError(f"--bs needs at least one batch size, e.g. --bs 64,128,256; got {text!r}")
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--bs must be comma-separated whole numbers, e.g. 64,128,256; got {text!r}") from None


def scaled_lr(lr: float, bs: int, base_bs: int, scaling: str) -> float:
    """The learning rate for batch size `bs`, given `lr` at `base_bs`: unchanged, linear or sqrt in bs."""
    if scaling == "linear":
        return lr * bs / base_bs
    if scaling == "sqrt":
        return lr * math.sqrt(bs / base_bs)
    if scaling == "none":
        return lr
    raise ConfigError(f"unknown lr scaling {scaling!r}; choose one of {', '.join(LR_SCALINGS)}")


@dataclass
class SweepConfig:
    """What `convscope bs-sweep` runs; every field is checked here, before anything is written."""

    batch_sizes: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    epochs: int = 1
    lr: float = 0.06
    lr_scaling: str = "none"
    base_bs: int = 512
    dataset: str = "mnist"
    data_root: str | None = None
    model: str | None = None  # MODULE:FACTORY (see TrainConfig.model); None: the book's simple_cnn
    seed: int = 42
    device: str = "auto"
    out: str = "runs"
    name: str | None = None
    limit_train: int | None = None  # train on the first N training images only (quick runs, tests)
    gns_every: int | None = None  # noise-scale measurement period in steps; None: ~60 per run
    threads: int | None = None  # torch CPU threads per setting; None: torch's default

    def __post_init__(self) -> None:
        self.batch_sizes = tuple(self.batch_sizes)
        if not self.batch_sizes:
            raise ConfigError("the batch-size list is empty; pass e.g. --bs 64,128,256")
        for bs in self.batch_sizes:
            if not is_whole_number(bs):
                raise ConfigError(f"batch sizes must be whole numbers >= 1, got {bs!r} in {self.batch_sizes}")
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ConfigError(f"batch sizes must differ, got {self.batch_sizes}")
        if self.lr_scaling not in LR_SCALINGS:
            raise ConfigError(f"unknown lr scaling {self.lr_scaling!r}; choose one of {', '.join(LR_SCALINGS)}")
        for label, value in (("base_bs", self.base_bs), ("limit_train", self.limit_train),
                             ("gns_every", self.gns_every), ("threads", self.threads)):
            if value is not None:
                check_whole_number(label, value)
        for bs in self.batch_sizes:  # lr, epochs, seed, name...: TrainConfig says what is wrong
            self.train_config(bs, out=self.out)

    def train_config(self, bs: int, out: str) -> TrainConfig:
        """The `convscope train` settings of one setting of the sweep."""
        return TrainConfig(dataset=self.dataset, data_root=self.data_root, model=self.model, epochs=self.epochs,
                           lr=scaled_lr(self.lr, bs, self.base_bs, self.lr_scaling), bs=bs, seed=self.seed,
                           device=self.device, out=out, name=f"bs{bs}", limit_train=self.limit_train)


@dataclass
class SweepResult:
    path: Path
    rows: list[dict[str, Any]]
    critical_batch_size: float
    recommendation: list[str]


# --------------------------------------------------------------------------- inside one setting's process
class _SweepTimer(Callback):
    """Times the training phases (not validation): wall time, and this process's CPU time."""

    order = 0
    seconds = cpu_seconds = 0.0

    def _sync(self) -> None:
        if self.learn.device.type == "cuda":
            torch.cuda.synchronize(self.learn.device)  # once per phase: GPU work is asynchronous

    def before_train(self) -> None:
        self._sync()
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def after_train(self) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start
        self.cpu_seconds += time.process_time() - self._cpu_start


class _TimedNoiseScale(GradientNoiseScale):
    """GradientNoiseScale that also measures the wall time of its own work (to subtract it)."""

    seconds = cpu_seconds = 0.0

    @property
    def name(self) -> str:
        return "gradient_noise_scale"

    def _timed(self, work: Callable[[], None]) -> None:
        if self.learn.device.type == "cuda":
            torch.cuda.synchronize(self.learn.device)  # only on measured steps
        start, cpu_start = time.perf_counter(), time.process_time()
        work()
        if self.learn.device.type == "cuda":
            torch.cuda.synchronize(self.learn.device)
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - cpu_start

    def before_backward(self) -> None:
        if self.learn.training and self.learn.train_iter % self.every == 0:
            self._timed(super().before_backward)

    def after_backward(self) -> None:
        if self._small is not None:
            self._timed(super().after_backward)


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max allocated"
    try:
        import resource  # Unix only
    except ImportError:
        return float("nan"), "unavailable on this platform"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process peak RSS"


def _run_setting_here(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one setting in this process and return its row (what the sweep's worker process runs)."""
    cfg = TrainConfig(**spec["train"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    gns = _TimedNoiseScale(every=spec["gns_every"])
    timer = _SweepTimer()
    # stats=False: no ActivationStats hooks and no report.html per setting -- they would add their own
    # cost to the training time this study compares (the sweep folder has its own figure).
    try:
        result = run_training(cfg, cbs=[gns, timer], stats=False)
    except NonFiniteError as exc:  # a diverged setting is a result of the study, not a failure of the sweep
        return {"bs": cfg.bs, "lr": cfg.lr, "epochs": cfg.epochs, "run": cfg.name, "diverged": str(exc),
                **dict.fromkeys(_FLOAT_FIELDS, float("nan")), "steps": None, "steps_to_target": None}
    learn = result.learn
    losses = learn.recorder.losses
    tail = max(1, len(losses) // 10)
    net_seconds = timer.seconds - gns.seconds
    peak, mem_kind = _peak_memory_mb(learn.device)
    samples = learn.train_iter * cfg.bs
    last = learn.recorder.epochs[-1]
    return {
        "bs": cfg.bs, "lr": cfg.lr, "epochs": cfg.epochs, "run": result.run_dir.name, "device": str(learn.device),
        "steps": learn.train_iter, "samples": samples, "train_seconds": net_seconds,
        "samples_per_s": samples / net_seconds if net_seconds > 0 else float("nan"),
        "train_cpu_seconds": timer.cpu_seconds - gns.cpu_seconds, "gns_seconds": gns.seconds,
        "accuracy": last.get("accuracy"), "valid_loss": last.get("valid_loss"),
        "final_train_loss": float(np.mean(losses[-tail:])), "peak_mem_mb": peak, "mem_kind": mem_kind,
        "b_simple_end": float(gns.b_simple[-1]) if len(gns.b_simple) else float("nan"),
        "b_simple_early": gns.b_simple_window(0.0, 0.25), "b_simple_late": gns.b_simple_window(0.5, 1.0),
        "gns_every": gns.every, "gns_measurements": len(gns.steps), "threads": torch.get_num_threads(),
    }


def _worker_main(argv: list[str]) -> None:
    try:
        row = _run_setting_here(json.loads(argv[0]))
    except ConvscopeError as exc:  # e.g. a model too big for the GPU at this batch size: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(row))  # the last line of stdout is the parent's answer


# --------------------------------------------------------------------------- the parent
def _run_setting(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    # Steadier timings: stop glibc trimming and re-faulting the heap between batches (benchmarks/_common.py,
    # MALLOC_ENV, says why).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "33554432")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "1073741824")
    proc = subprocess.run([sys.executable, "-m", "convscope.experiments.bs_sweep", json.dumps(spec)], env=env,
                          stdout=subprocess.PIPE, text=True)  # stderr passes through: warnings stay visible
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RunError(f"the setting bs {spec['train']['bs']} failed (exit code {proc.returncode}); "
                       "its error is printed above")
    return json.loads(lines[-1])


def _n_train(cfg: SweepConfig) -> int:
    # the same loader `convscope train` uses: same errors, same data
    n = len(load_data(cfg.train_config(cfg.batch_sizes[0], out=cfg.out)).train_labels)
    return n if cfg.limit_train is None else min(n, cfg.limit_train)


def _check_model(cfg: SweepConfig, device: torch.device) -> None:
    """Build the model once here, with the data on the CPU, so that a bad --model is refused in one line before
    the sweep folder exists. On the CPU the memory check runs here too, at the largest batch size; a GPU is
    left untouched by this process (a CUDA context and cached memory here would be taken from the settings'
    processes), and each setting's process checks its own batch size there."""
    train_cfg = cfg.train_config(max(cfg.batch_sizes), out=cfg.out)
    _, _, info = build_batches(train_cfg, torch.device("cpu"))
    build_model(train_cfg, info, device if device.type == "cpu" else None)


def _steps_to_target(sweep_dir: Path, rows: list[dict[str, Any]]) -> float:
    """Add `steps_to_target`: the first step whose smoothed train loss is <= a loss every run reaches.

    The loss is smoothed over 5% of each run's steps, so that every run is smoothed alike.
    """
    rows = [r for r in rows if not r.get("diverged")]
    curves, widths = [], []
    for row in rows:
        loss = read_npz(sweep_dir / row["run"] / "steps.npz").get("loss", np.zeros(0))
        widths.append(max(1, len(loss) // 20))
        curves.append(np.convolve(loss, np.ones(widths[-1]) / widths[-1], mode="valid"))
    target = max((float(c.min()) for c in curves if len(c)), default=float("nan"))
    for row, curve, w in zip(rows, curves, widths):
        hit = np.flatnonzero(curve <= target)
        row["steps_to_target"] = int(hit[0]) + w if len(hit) else None  # curve[i] ends at step i + w (1-based)
    return target


def run_sweep(cfg: SweepConfig, on_setting: Callable[[dict[str, Any]], None] | None = None) -> SweepResult:
    """Run every setting of `cfg` (each in a fresh process) and write the sweep folder.

    All input is checked before the sweep folder is made: a bad setting leaves nothing behind.
    """
    refuse_under_torchrun("convscope bs-sweep")
    device = resolve_device(cfg.device)
    n_train = _n_train(cfg)
    too_big = [bs for bs in cfg.batch_sizes if bs > n_train]
    if too_big:
        raise ConfigError(f"batch sizes {too_big} are larger than the training set ({n_train} images)"
                          + (" after --limit-train" if cfg.limit_train is not None else ""))
    _check_model(cfg, device)
    name = cfg.name or time.strftime("%Y%m%d-%H%M%S") + "-bs-sweep"
    sweep_dir = create_run_dir(cfg.out, name)
    rows = []
    for bs in cfg.batch_sizes:
        per_epoch = n_train // bs  # training drops the last short batch
        every = cfg.gns_every or max(1, round(per_epoch * cfg.epochs / _MEASUREMENTS_PER_RUN))
        spec = {"train": cfg.train_config(bs, out=str(sweep_dir)).to_dict(), "gns_every": every,
                "threads": cfg.threads}
        row = _run_setting(spec)
        rows.append(row)
        if on_setting is not None:
            on_setting(row)
    loss_target = _steps_to_target(sweep_dir, rows)
    b_crit = _median_noise_scale(rows)
    recommendation = recommend(rows, b_crit, device)
    atomic_write_json(sweep_dir / "bs_sweep.json", _strict_json({
        "config": asdict(cfg), "n_train": n_train, "device": str(device), "loss_target": loss_target,
        "critical_batch_size": b_crit, "settings": rows, "recommendation": recommendation}))
    _plot_sweep(sweep_dir, rows, b_crit, loss_target, sweep_dir / "bs_sweep.png",
                b_early=_median_noise_scale(rows, "b_simple_early"))
    return SweepResult(sweep_dir, rows, b_crit, recommendation)


def _strict_json(obj: Any) -> Any:
    """NaN and infinities -> None: bare NaN is not JSON, and other readers than Python's reject it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict_json(v) for v in obj]
    return obj


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _median_noise_scale(rows: list[dict[str, Any]], key: str = "b_simple_late") -> float:
    """Median over the runs of one B_simple summary ('b_simple_late' = the critical batch size we report)."""
    values = [r[key] for r in rows if not r.get("diverged") and _finite(r[key]) and r[key] > 0]
    return float(statistics.median(values)) if values else float("nan")


def recommend(rows: list[dict[str, Any]], b_crit: float, device: torch.device) -> list[str]:
    """Plain-language conclusions from the measured rows."""
    lines = [f"bs {r['bs']} diverged (lr {r['lr']:.4g}): {r['diverged']}" for r in rows if r.get("diverged")]
    rows = [r for r in rows if not r.get("diverged")]
    if not rows:
        return [*lines, "Every setting diverged: lower --lr or use --lr-scaling sqrt/none."]
    early = [r["b_simple_early"] for r in rows if _finite(r["b_simple_early"])]
    if math.isfinite(b_crit):
        then = f"~{statistics.median(early):,.0f} in the first quarter of training, " if early else ""
        lines.append(
            f"Critical batch size ~ gradient noise scale B_simple: {then}~{b_crit:,.0f} in the second half "
            "(medians over the runs). It grows as the loss falls, so the batch that still pays off grows during "
            "training: below B_simple doubling the batch nearly halves the steps needed; well above it, extra "
            "samples per step buy few fewer steps.")
    else:
        lines.append("The gradient noise scale could not be estimated (too few measurements): train longer.")
    reached = sorted((r["bs"], r["steps_to_target"]) for r in rows if r.get("steps_to_target"))
    if len(reached) >= 2:
        chain = " -> ".join(f"{steps} (bs {bs})" for bs, steps in reached)
        ratios = ", ".join(f"x{b / a:.2f}" for (_, a), (_, b) in zip(reached, reached[1:]))
        lines.append(f"Measured: steps to reach the train loss every run reached: {chain}; per step up in batch "
                     f"size the steps changed {ratios} (x0.5 per doubling = perfect scaling, x1 = no gain).")
    largest = max(rows, key=lambda r: r["bs"])
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**20
        lines.append(f"Memory: the largest batch tried (bs {largest['bs']}) peaked at {largest['peak_mem_mb']:,.0f} "
                     f"MiB of {total:,.0f} MiB on the GPU, so it fits.")
    else:
        lines.append(f"Memory is not the limit up to the largest batch tried (bs {largest['bs']}): its process "
                     f"peaked at {largest['peak_mem_mb']:,.0f} MiB RSS, dataset included.")
    best = max(rows, key=lambda r: r["accuracy"])
    good = [r for r in rows if r["accuracy"] >= best["accuracy"] - _ACCURACY_SLACK]
    pick = min(good, key=lambda r: r["train_seconds"])
    fastest = min(rows, key=lambda r: r["train_seconds"])
    lines.append(f"Best test accuracy: bs {best['bs']} ({best['accuracy']:.2%}, {best['train_seconds']:.1f} s of "
                 f"training); fastest: bs {fastest['bs']} ({fastest['accuracy']:.2%}, "
                 f"{fastest['train_seconds']:.1f} s).")
    side = "below" if pick["bs"] < b_crit else "above"  # the late-training value
    lines.append(f"Recommendation: bs {pick['bs']}, the fastest within {100 * _ACCURACY_SLACK:g} percentage points "
                 "of the best accuracy "
                 f"({pick['accuracy']:.2%} in {pick['train_seconds']:.1f} s)"
                 + (f"; it is {side} the critical batch size." if math.isfinite(b_crit) else "."))
    return lines


def format_noise_scale(value: float | None) -> str:
    """A noise scale for a table: 'n/a' where it could not be estimated (None or NaN)."""
    return f"{value:,.0f}" if _finite(value) else "n/a"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The sweep's rows as a Markdown table (what docs/bs_sweep.md shows)."""
    head = ["bs", "lr", "steps", "test acc", "train s", "cpu s", "samples/s", "peak MiB", "final train loss",
            "steps to target", "B_simple early", "B_simple late"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        accuracy = "diverged" if r.get("diverged") else f"{r['accuracy']:.2%}"
        cells = [str(r["bs"]), f"{r['lr']:.4g}", str(r["steps"] or "-"), accuracy, f"{r['train_seconds']:.1f}",
                 f"{r['train_cpu_seconds']:.1f}",
                 f"{r['samples_per_s']:,.0f}", f"{r['peak_mem_mb']:,.0f}", f"{r['final_train_loss']:.4f}",
                 str(r.get("steps_to_target") or "-"), format_noise_scale(r["b_simple_early"]),
                 format_noise_scale(r["b_simple_late"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _window_b_simple(g2: np.ndarray, tr_sigma: np.ndarray, width: int) -> np.ndarray:
    """Centred moving ratio of means (NaN where the mean |G|^2 is not positive): readable noise-scale curves."""
    kernel = np.ones(width) / width
    g2_avg, tr_avg = np.convolve(g2, kernel, mode="same"), np.convolve(tr_sigma, kernel, mode="same")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(g2_avg > 0, tr_avg / g2_avg, np.nan)


def _plot_sweep(sweep_dir: Path, rows: list[dict[str, Any]], b_crit: float, loss_target: float,
                path: Path, b_early: float = float("nan")) -> None:
    """bs_sweep.png: `sweep_figure` saved."""
    sweep_figure(sweep_dir, rows, b_crit, loss_target, b_early).savefig(path, dpi=110)


def sweep_figure(sweep_dir: Path, rows: list[dict[str, Any]], b_crit: float, loss_target: float,
                 b_early: float = float("nan")) -> Figure:
    """One figure: accuracy, time, steps against batch size (log2 axis), and the noise scale in training.

    The x axes span the batch sizes tried: a noise scale outside them is named at that edge rather than
    drawn (a line at 16,770 beside sizes up to 2,048 squashed every curve to the left). A noise-scale curve
    that ends before training does is labelled where it ends, and the axis says why it can."""
    import matplotlib.ticker
    from matplotlib.figure import Figure  # matplotlib loads only when the figure is drawn

    all_bs = [r["bs"] for r in rows]
    rows = [r for r in rows if not r.get("diverged")]  # a diverged setting has no numbers to draw
    bs = [r["bs"] for r in rows]
    if not rows:
        fig = Figure(figsize=(6, 2))
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, f"every setting diverged (bs {', '.join(map(str, all_bs))})", ha="center", va="center")
        return fig
    fig = Figure(figsize=(11, 8.4), layout="constrained")
    (ax_acc, ax_time), (ax_steps, ax_gns) = fig.subplots(2, 2)
    ax_acc.plot(bs, [100 * r["accuracy"] for r in rows], "o-")
    ax_acc.set(ylabel="test accuracy (%)", title="accuracy")
    ax_time.plot(bs, [r["train_seconds"] for r in rows], "o-", label="training time (s)")
    ax_time.set(ylabel="seconds", title="training time (noise-scale overhead removed)")
    ax_rate = ax_time.twinx()
    ax_rate.plot(bs, [r["samples_per_s"] for r in rows], "s--", color="C1", label="samples/s")
    ax_rate.set_ylabel("samples / s", color="C1")
    ax_steps.plot(bs, [r["steps"] for r in rows], "o-", label="optimizer steps (whole run)")
    reached = [(r["bs"], r["steps_to_target"]) for r in rows if r.get("steps_to_target")]
    if reached:
        ax_steps.plot(*zip(*reached), "s-", label=f"steps to train loss {loss_target:.3f}")
        b0, s0 = reached[0]
        ax_steps.plot(bs, [s0 * b0 / b for b in bs], ":", color="gray", label="perfect scaling (steps ∝ 1/bs)")
    ax_steps.set_yscale("log", base=2)
    ax_steps.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_steps.set(ylabel="steps", title="optimizer steps")
    ax_steps.legend(fontsize=8)
    # A noise scale far outside the batch sizes tried would stretch the x axis to it and squash the curves:
    # the line is drawn only within the sizes tried, and otherwise named at that edge of the panel.
    x_lo, x_hi = min(all_bs) / 1.3, max(all_bs) * 1.3
    for ax in (ax_acc, ax_time, ax_steps):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_bs, [str(b) for b in all_bs])
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
        for value, style, what in ((b_crit, "--", "second half"), (b_early, ":", "first quarter")):
            if not math.isfinite(value):
                continue
            if x_lo <= value <= x_hi:
                ax.axvline(value, ls=style, color="red", alpha=0.6)
            else:
                right = value > x_hi
                ax.annotate(f"{what}: B_simple ~{value:,.0f} {'->' if right else '<-'}",
                            xy=(0.99 if right else 0.01, 0.97 if style == "--" else 0.9), xycoords="axes fraction",
                            ha="right" if right else "left", va="top", fontsize=7, color="red")
        ax.set_xlim(x_lo, x_hi)
    for r in rows:
        arrays = read_npz(sweep_dir / r["run"] / "noise_scale.npz")
        if len(arrays.get("g2", ())) < 3:
            continue
        width = max(3, len(arrays["g2"]) // 5)
        curve = _window_b_simple(arrays["g2"], arrays["tr_sigma"], width)
        x = arrays["step"] / max(1, r["steps"])
        (line,) = ax_gns.plot(x, curve, label=f"bs {r['bs']}")
        finite = np.flatnonzero(np.isfinite(curve))
        if finite.size and x[finite[-1]] < 0.95 * x[-1]:  # the curve stops early: say why, where it stops
            ax_gns.annotate(f"bs {r['bs']}: no B_simple from {100 * x[finite[-1]]:.0f}% on", (x[finite[-1]],
                            curve[finite[-1]]), xytext=(4, -10), textcoords="offset points", fontsize=7,
                            color=line.get_color())
    if math.isfinite(b_crit):
        ax_gns.axhline(b_crit, ls="--", color="red", alpha=0.6, label=f"second half: ~{b_crit:,.0f}")
    if math.isfinite(b_early):
        ax_gns.axhline(b_early, ls=":", color="red", alpha=0.6, label=f"first quarter: ~{b_early:,.0f}")
    if ax_gns.get_lines():  # a log axis with nothing on it cannot be drawn
        ax_gns.set_yscale("log")
    # Why a curve has gaps or stops: B_simple = tr(Sigma) / |G|^2, and the unbiased estimate of |G|^2 from two
    # batch sizes goes <= 0 when the gradient's noise outweighs its mean (late in training, at small batches).
    ax_gns.set(ylabel="B_simple", title="gradient noise scale during training (moving ratio of means)")
    ax_gns.set_xlabel("fraction of training\n(a gap or an early end: there the estimate of |G|^2 was <= 0, the "
                      "gradient's noise\nlarger than its mean, so B_simple = tr(Sigma) / |G|^2 is undefined)",
                      fontsize=8)
    ax_gns.grid(alpha=0.3)
    if ax_gns.get_legend_handles_labels()[0]:
        ax_gns.legend(fontsize=8)
    fig.suptitle("batch-size sweep\nred: gradient noise scale B_simple, median over the runs; dotted = first "
                 "quarter of training, dashed = second half (the critical batch size)", fontsize=10)
    return fig


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
