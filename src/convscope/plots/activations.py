"""Matplotlib figures of a run: activation statistics, gradients, loss.

Every function takes plain data (an `ActivationStatsData`, or the arrays of steps.npz and the rows of
metrics.jsonl), so it works the same on `learn.activation_stats.data` during a session and on
`load_run(path).activation_stats` in another process. Figures are made with `matplotlib.figure.Figure`
directly, never through pyplot: no global figure registry to leak memory in a long training job, no
GUI backend needed on a headless machine, and a returned Figure still displays in a notebook.

    fig = plot_layer_stats(load_run("runs/x").activation_stats, "conv1.act")
    fig.savefig("conv1.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from convscope.errors import ConfigError

if TYPE_CHECKING:  # the figures read its arrays; runs/ imports these figures for its plot methods
    from convscope.runs.stats_data import ActivationStatsData

__all__ = [
    "color_dim",
    "plot_dead",
    "plot_grad_stats",
    "plot_layer",
    "plot_layer_stats",
    "plot_loss",
    "plot_overview",
    "smooth",
]

_UPDATE_RATIO_REF = 1e-3  # the classic rule of thumb: each step changes the weights by about 1/1000


# ---------------------------------------------------------------------------- helpers
def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _step_extent(steps: np.ndarray) -> tuple[float, float]:
    """x limits of an image whose columns are the recorded steps (evenly spaced by construction, see
    stats/buffer.py), so that each column is centred on its step and lines up with the line plots."""
    if len(steps) == 0:
        return -0.5, 0.5
    half = 0.5 * (float(steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else 1.0)
    return float(steps[0]) - half, float(steps[-1]) + half


def _layer_styles(n: int) -> list[dict[str, Any]]:
    """Line styles for n layers: colour by depth (first dark, last bright), so "darker = earlier" reads
    at a glance even with a dozen lines; the dash pattern cycles so neighbouring layers still differ."""
    cmap = colormaps["viridis"]
    dashes = ("-", "--", ":")
    return [{"color": cmap(0.9 * i / max(n - 1, 1)), "ls": dashes[i % 3], "lw": 1.2} for i in range(n)]


def _plain_log_ticks(ax: Axes) -> None:
    """Label a log axis 0.5, 1, 2 instead of 5x10^-1, 10^0, 2x10^0; minor ticks (only 2 and 5 times a
    power of ten) get labels only when the axis spans under two decades, where majors alone are too few."""

    def minor(v: float, _: int) -> str:
        lo, hi = ax.get_ylim()
        mantissa = round(v / 10 ** np.floor(np.log10(v)), 6)
        return f"{v:g}" if lo > 0 and hi / lo < 100 and mantissa in (2.0, 5.0) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _text(name: str) -> str:
    """A layer name as literal matplotlib text: a '$' would otherwise start math mode (and an odd
    number of them raise an error)."""
    return name.replace("$", r"\$")


def _require_hist(stats: ActivationStatsData) -> None:
    if stats.bins == 0 or stats.n_steps == 0:
        what = "no histograms" if stats.bins == 0 else "no steps"
        raise ConfigError(f"this run recorded {what}, so there is no colorful dimension to draw; "
                          "train with ActivationStats(with_hist=True)")


def smooth(values: Sequence[float] | np.ndarray, beta: float = 0.98) -> np.ndarray:
    """Debiased exponential moving average, as fastai's Recorder smooths its loss (NaNs are skipped)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full_like(values, np.nan)
    avg, n = 0.0, 0
    for i, v in enumerate(values):
        if np.isfinite(v):
            n += 1
            avg = beta * avg + (1 - beta) * v
        if n:
            out[i] = avg / (1 - beta**n)
    return out


# ---------------------------------------------------------------------------- one layer
def plot_layer_stats(stats: ActivationStatsData, layer: str | int,
                     axes: Sequence[Axes] | None = None) -> Figure:
    """Mean, standard deviation and % of activations near zero (<= 0.05) of one layer, per recorded step.

    The fastai book's `plot_layer_stats`. Pass three `axes` to draw into an existing figure.
    """
    i = stats.index(layer)
    name = _text(stats.layers[i])
    if axes is None:
        fig = _new_figure(12, 3.2)
        axes = fig.subplots(1, 3)
        fig.suptitle(f"{name}: activation statistics per step")
    fig = axes[0].figure
    series = [("mean", stats.mean[:, i], "C0"), ("std", stats.std[:, i], "C1"),
              ("% near zero (<= 0.05)", 100 * stats.near_zero[:, i], "C3")]
    for ax, (title, y, color) in zip(axes, series):
        ax.plot(stats.steps, y, color=color, lw=1)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[2].set_ylim(-2, 102)
    return fig


def color_dim(stats: ActivationStatsData, layer: str | int, ax: Axes | None = None,
              cmap: str = "viridis") -> Figure:
    """The "colorful dimension": one column per recorded step, the layer's activation histogram from
    bottom (low values) to top, coloured by log(1 + count).

    The log keeps the bins that hold a few activations visible next to the huge near-zero bin. A
    healthy layer shows a smooth, wide band; a collapsing one turns dark everywhere but the bottom row.
    Raises ConfigError (a ValueError) when the run recorded no histograms.
    """
    _require_hist(stats)
    i = stats.index(layer)
    name = _text(stats.layers[i])
    if ax is None:
        fig = _new_figure(10, 4)
        ax = fig.subplots()
        ax.set_title(f"{name}: histogram of activations per step (colour: log(1 + count))")
    fig = ax.figure
    image = np.log1p(stats.hist[:, i, :].astype(np.float64)).T  # [bins, steps]
    lo, hi = (float(v) for v in stats.hist_range[i])
    x0, x1 = _step_extent(stats.steps)
    if hi > lo:
        extent, ylabel = (x0, x1, lo, hi), "activation value"
    else:  # an adaptive range that was never fixed: fall back to bin numbers
        extent, ylabel = (x0, x1, -0.5, image.shape[0] - 0.5), "histogram bin"
    im = ax.imshow(image, origin="lower", aspect="auto", extent=extent, cmap=cmap, interpolation="nearest")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, label="log(1 + count)", pad=0.01)
    return fig


def plot_dead(stats: ActivationStatsData, layer: str | int, ax: Axes | None = None) -> Figure:
    """Share of dead channels (<= 0 for the whole batch) and of near-zero activations, per step."""
    i = stats.index(layer)
    name = _text(stats.layers[i])
    if ax is None:
        fig = _new_figure(7, 3.2)
        ax = fig.subplots()
        ax.set_title(f"{name}: dead channels and near-zero activations")
    fig = ax.figure
    ax.plot(stats.steps, 100 * stats.dead[:, i], color="C3", lw=1.2, label="dead channels (% of channels)")
    ax.plot(stats.steps, 100 * stats.near_zero[:, i], color="C0", lw=1, alpha=0.8,
            label="near zero (% of activations)")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("step")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def plot_layer(stats: ActivationStatsData, layer: str | int) -> Figure:
    """Everything about one layer in one figure: `plot_layer_stats` on top, `color_dim` (when the run
    recorded histograms) and `plot_dead` below, all over the same steps.

    This is what the report embeds per layer. It is laid out by hand instead of by constrained layout,
    which was the slowest part of a report (docs/measurements.md#plots-activations).
    """
    i = stats.index(layer)
    fig = Figure(figsize=(13, 6.4))
    top = fig.add_gridspec(1, 3, left=0.055, right=0.985, top=0.895, bottom=0.575, wspace=0.22)
    plot_layer_stats(stats, i, axes=[fig.add_subplot(top[0, k]) for k in range(3)])
    bottom = fig.add_gridspec(1, 2, width_ratios=(2.15, 1), left=0.055, right=0.985, top=0.455, bottom=0.075,
                              wspace=0.13)
    if stats.bins and stats.n_steps:
        ax_hist = fig.add_subplot(bottom[0, 0])
        color_dim(stats, i, ax=ax_hist)  # its colour bar takes its room from ax_hist
        ax_hist.set_title("histogram per step (colour: log(1 + count))")
        ax_dead = fig.add_subplot(bottom[0, 1])
    else:
        ax_dead = fig.add_subplot(bottom[0, :])
    plot_dead(stats, i, ax=ax_dead)
    ax_dead.set_title("dead channels and near zero")
    fig.suptitle(f"layer {_text(stats.layers[i])}", fontweight="bold")
    return fig


# ---------------------------------------------------------------------------- all layers
def _layer_heatmap(ax: Axes, values: np.ndarray, stats: ActivationStatsData, title: str, cmap: str) -> Any:
    """Layers (first at the top) by steps, 0..100 %."""
    x0, x1 = _step_extent(stats.steps)
    n = len(stats.layers)
    im = ax.imshow(100 * values.T, aspect="auto", origin="upper", extent=(x0, x1, n - 0.5, -0.5),
                   vmin=0, vmax=100, cmap=cmap, interpolation="nearest")
    ax.set_yticks(range(n), [_text(name) for name in stats.layers], fontsize=8 if n <= 16 else 6)
    ax.set_xlabel("step")
    ax.set_title(title)
    return im


def plot_overview(stats: ActivationStatsData) -> Figure:
    """Every layer at once: mean and std per layer (one line each), and heat maps of the near-zero and
    dead-channel shares (one row per layer), so the layer that collapses first stands out."""
    n = len(stats.layers)
    fig = _new_figure(13, 5.5 + 0.22 * n)
    (ax_mean, ax_std), (ax_near, ax_dead) = fig.subplots(2, 2, height_ratios=(1, 0.5 + 0.06 * n))
    for name, style, mean, std in zip(stats.layers, _layer_styles(n), stats.mean.T, stats.std.T):
        ax_mean.plot(stats.steps, mean, label=_text(name), **style)
        ax_std.plot(stats.steps, std, **style)
    ax_mean.set_title("mean of activations")
    finite = stats.std[np.isfinite(stats.std)]
    if finite.size and np.all(finite > 0):  # a log axis shows layers whose scales differ 100x side by side
        ax_std.set_yscale("log")
        _plain_log_ticks(ax_std)
    ax_std.set_title("std of activations" + (" (log scale)" if ax_std.get_yscale() == "log" else ""))
    for ax in (ax_mean, ax_std):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.legend(*ax_mean.get_legend_handles_labels(), loc="outside right upper", fontsize=8, title="layer")
    im = _layer_heatmap(ax_near, stats.near_zero, stats, "% of activations near zero (<= 0.05)", "magma")
    fig.colorbar(im, ax=ax_near, label="%", pad=0.01)
    im = _layer_heatmap(ax_dead, stats.dead, stats, "% dead channels (<= 0 over the whole batch)", "magma")
    fig.colorbar(im, ax=ax_dead, label="%", pad=0.01)
    fig.suptitle("all layers")
    return fig


def plot_grad_stats(stats: ActivationStatsData) -> Figure:
    """Per layer with parameters: gradient L2 norm and update/weight ratio per step (log scales).

    The dashed line marks an update ratio of 1e-3, a common rule of thumb for a healthy learning rate:
    far above it the weights are thrashed each step, far below it the layer barely learns.
    Raises ConfigError when no layer has gradient statistics (e.g. grad_stats=False).
    """
    has = [j for j in range(len(stats.layers))
           if np.isfinite(stats.grad_norm[:, j]).any() or np.isfinite(stats.update_ratio[:, j]).any()]
    if not has or stats.n_steps == 0:
        raise ConfigError("this run recorded no gradient statistics (no layer with parameters, or "
                          "ActivationStats(grad_stats=False))")
    fig = _new_figure(13, 4.2)
    ax_norm, ax_ratio = fig.subplots(1, 2)
    for j, style in zip(has, _layer_styles(len(has))):
        ax_norm.plot(stats.steps, stats.grad_norm[:, j], label=_text(stats.layers[j]), **style)
        ax_ratio.plot(stats.steps, stats.update_ratio[:, j], **style)
    ax_ratio.axhline(_UPDATE_RATIO_REF, color="k", ls="--", lw=1)
    ax_ratio.annotate("1e-3", (1.0, _UPDATE_RATIO_REF), xycoords=("axes fraction", "data"),
                      xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=8)
    for ax, title in ((ax_norm, "gradient norm per layer"), (ax_ratio, "update / weight ratio per step")):
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    fig.legend(*ax_norm.get_legend_handles_labels(), loc="outside right upper", fontsize=8, title="layer")
    return fig


# ---------------------------------------------------------------------------- training curves
def _epoch_ends(steps: dict[str, np.ndarray]) -> dict[int, float]:
    """Epoch number -> last step of that epoch (where its validation happened)."""
    if "epoch" not in steps or "step" not in steps or len(steps["step"]) == 0:
        return {}
    ends: dict[int, float] = {}
    for e, s in zip(np.asarray(steps["epoch"]).tolist(), np.asarray(steps["step"]).tolist()):
        ends[int(e)] = float(s)
    return ends


def plot_loss(steps: dict[str, np.ndarray], metrics: list[dict[str, Any]]) -> Figure:
    """Training loss per step (raw and smoothed, validation loss at each epoch end) and the per-epoch
    losses and accuracy. `steps` is steps.npz (`Run.steps`), `metrics` the rows of metrics.jsonl."""
    loss = np.asarray(steps.get("loss", []), dtype=np.float64)
    if loss.size == 0 and not metrics:
        raise ConfigError("nothing to plot: the run has no step losses and no epoch metrics yet")
    x = np.asarray(steps["step"]) if "step" in steps and len(steps["step"]) == loss.size else np.arange(loss.size)
    fig = _new_figure(13, 4)
    ax_step, ax_epoch = fig.subplots(1, 2, width_ratios=(2, 1))
    # fastai smooths with beta 0.98 (~50 steps); a short run gets a shorter window, or the curve lags
    # behind the loss for most of the plot.
    window = int(np.clip(loss.size // 20, 1, 50))
    ax_step.plot(x, loss, color="C0", alpha=0.3, lw=0.8, label="train loss")
    ax_step.plot(x, smooth(loss, beta=1 - 1 / window), color="C0", lw=1.5,
                 label=f"train loss (smoothed, ~{window} steps)")
    ends = _epoch_ends(steps)
    valid = [(ends[int(r["epoch"])], r["valid_loss"]) for r in metrics
             if "valid_loss" in r and "epoch" in r and int(r["epoch"]) in ends]
    if valid:
        ax_step.plot(*zip(*valid), "o", color="C1", label="valid loss (epoch end)")
    ax_step.set_xlabel("step")
    ax_step.set_ylabel("loss")
    ax_step.set_title("loss per step")
    ax_step.grid(alpha=0.3)
    ax_step.legend(fontsize="small")
    _plot_epochs(ax_epoch, metrics)
    return fig


def _plot_epochs(ax: Axes, metrics: list[dict[str, Any]]) -> None:
    epochs = [int(r.get("epoch", k)) for k, r in enumerate(metrics)]  # as in metrics.jsonl and the report
    for key, marker, color in (("train_loss", "o-", "C0"), ("valid_loss", "s-", "C1")):
        ys = [r.get(key, np.nan) for r in metrics]
        if any(np.isfinite(ys)):
            ax.plot(epochs, ys, marker, color=color, label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("per epoch")
    ax.grid(alpha=0.3)
    if epochs:
        ax.set_xticks(epochs)
    acc = [r.get("accuracy", np.nan) for r in metrics]
    if any(np.isfinite(acc)):
        ax_acc = ax.twinx()
        ax_acc.plot(epochs, acc, "^-", color="C2", label="accuracy")
        for e, a in zip(epochs, acc):
            ax_acc.annotate(f"{a:.4f}", (e, a), xytext=(0, 6), textcoords="offset points", ha="center",
                            fontsize=8, color="C2")
        ax_acc.set_ylabel("accuracy", color="C2")
        finite = [a for a in acc if np.isfinite(a)]
        ax_acc.set_ylim(max(0.0, min(finite) - 0.03), min(1.0, max(finite)) + 0.01)  # never far above 1
        handles = ax.get_legend_handles_labels()[0] + ax_acc.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize="small", loc="center right")
    elif ax.lines:
        ax.legend(fontsize="small")
