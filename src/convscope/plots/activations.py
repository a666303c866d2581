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
from matplotlib.ticker import FuncFormatter, NullLocator

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
    "smooth_centred",
]

_UPDATE_RATIO_REF = 1e-3  # the classic rule of thumb: each step changes the weights by about 1/1000
# Module kinds whose output is an activation's (>= 0 for the ReLU family): fastai's "near zero" (<= 0.05) is
# then the share at (about) zero. Every other layer (conv, BatchNorm, Linear) is a pre-activation layer,
# signed: there "<= 0.05" counts every negative value too, so the figures add what is actually near zero.
ACTIVATION_KINDS = frozenset({"ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU",
                              "Mish", "Sigmoid", "Tanh", "Softplus", "Hardswish", "Hardsigmoid", "Hardtanh"})
NEAR_ZERO_LABEL = "near zero (<= 0.05, fastai's)"


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


def is_pre_activation(stats: ActivationStatsData, i: int) -> bool:
    """Layer i's output is signed (a conv, BatchNorm or Linear output), not an activation's."""
    kind = stats.kinds[i] if i < len(stats.kinds) else ""
    return bool(kind) and kind not in ACTIVATION_KINDS


def signed_shares(stats: ActivationStatsData, i: int) -> list[tuple[str, np.ndarray, str]]:
    """(label, % per step, colour) of the shares a pre-activation layer needs beside fastai's near zero:
    |x| <= 0.05 and x < 0, where the run recorded them (the optional fields abs_near_zero and negative; None
    in older run folders). Empty for an activation layer."""
    if not is_pre_activation(stats, i):
        return []
    out = []
    for name, label, color in (("abs_near_zero", "|x| <= 0.05", "C2"), ("negative", "x < 0", "C4")):
        values = getattr(stats, name, None)
        if values is not None:
            out.append((label, 100 * np.asarray(values)[:, i], color))
    return out


def range_text(stats: ActivationStatsData, i: int) -> str:
    """What a histogram of layer i covers, said on the figure: its range, and what it leaves out."""
    lo, hi = (float(v) for v in stats.hist_range[i])
    if not hi > lo:
        return "range never fixed: bins by number"
    text = f"range [{lo:g}, {hi:g}]"
    if lo >= 0 and is_pre_activation(stats, i):
        text += ", values below 0 not counted"
    return text


def _empty_note(ax: Axes, text: str) -> None:
    """Say in words what an all-dark (all-zero) panel means, so that it does not read as a broken figure."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="white",
            bbox={"boxstyle": "round", "facecolor": "0.25", "edgecolor": "none", "alpha": 0.85})


def _require_hist(stats: ActivationStatsData) -> None:
    if stats.bins == 0 or stats.n_steps == 0:
        what = "no histograms" if stats.bins == 0 else "no steps"
        raise ConfigError(f"this run recorded {what}, so there is no colorful dimension to draw; "
                          "train with ActivationStats(with_hist=True)")


def smooth_centred(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Mean over `window` points centred on each point (fewer at the ends; NaNs skipped): smoothing without
    lag, so the curve sits on the raw one instead of trailing it by `window` steps as a moving average does."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(ok, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(ok)])
    half = max(int(window), 1) // 2
    idx = np.arange(len(values))
    lo, hi = np.maximum(0, idx - half), np.minimum(len(values), idx + half + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts[hi] > counts[lo], (sums[hi] - sums[lo]) / (counts[hi] - counts[lo]), np.nan)


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

    The fastai book's `plot_layer_stats`, with its definition of near zero (every value <= 0.05, negative ones
    included), so that the numbers compare with the book's. For a pre-activation layer (conv, BatchNorm,
    Linear output) the third panel also shows, where the run recorded them, the share actually near zero
    (|x| <= 0.05) and the share below zero: about half of a healthy signed layer is below zero, which
    fastai's number alone reads as "near zero". Pass three `axes` to draw into an existing figure.
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
        ax.plot(stats.steps, y, color=color, lw=1, label=NEAR_ZERO_LABEL if ax is axes[2] else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if is_pre_activation(stats, i):
        axes[2].set_title("% near zero (<= 0.05: negatives count)")
    extra = signed_shares(stats, i)
    for label, y, color in extra:
        axes[2].plot(stats.steps, y, color=color, lw=1, label=label)
    if extra:
        axes[2].set_title("% of values (before the activation: signed)")
        axes[2].legend(fontsize="x-small", loc="best")
    axes[2].set_ylim(-2, 102)
    return fig


def color_dim(stats: ActivationStatsData, layer: str | int, ax: Axes | None = None,
              cmap: str = "viridis") -> Figure:
    """The "colorful dimension": one column per recorded step, the layer's activation histogram from
    bottom (low values) to top, coloured by log(1 + count). The title states the histogram's range (values
    outside it are not counted): [0, 10] after a ReLU, an activation's bounds after a sigmoid, tanh or softmax,
    a signed range before an activation.

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
        ax.set_title(f"{name}: histogram of activations per step, {range_text(stats, stats.index(layer))} "
                     "(colour: log(1 + count))")
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


def plot_dead(stats: ActivationStatsData, layer: str | int, ax: Axes | None = None,
              near_zero: bool = True) -> Figure:
    """Share of dead channels (<= 0 for the whole batch) and, unless `near_zero` is False (the per-layer
    figure draws it beside already), of near-zero activations, per step. A layer with no dead channel at
    any recorded step says so on the panel."""
    i = stats.index(layer)
    name = _text(stats.layers[i])
    if ax is None:
        fig = _new_figure(7, 3.2)
        ax = fig.subplots()
        ax.set_title(f"{name}: dead channels and near-zero activations")
    fig = ax.figure
    dead = 100 * stats.dead[:, i]
    ax.plot(stats.steps, dead, color="C3", lw=1.2, label="dead channels (% of channels)")
    if near_zero:
        ax.plot(stats.steps, 100 * stats.near_zero[:, i], color="C0", lw=1, alpha=0.8,
                label=f"{NEAR_ZERO_LABEL} (% of activations)")
    finite = dead[np.isfinite(dead)]
    if finite.size and not finite.any():
        ax.text(0.5, 0.5, "no dead channel at any recorded step", transform=ax.transAxes, ha="center",
                va="center", fontsize=9, color="C3")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("step")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
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
        ax_hist.set_title(f"histogram per step, {range_text(stats, i)} (colour: log(1 + count))")
        ax_dead = fig.add_subplot(bottom[0, 1])
    else:
        ax_dead = fig.add_subplot(bottom[0, :])
    plot_dead(stats, i, ax=ax_dead, near_zero=False)  # the near-zero share is the top right panel
    ax_dead.set_title("dead channels (<= 0 for the whole batch)")
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


def _panel_grid(n: int, cols: int = 7) -> tuple[int, int]:
    """(rows, columns) of small multiples for n layers: up to `cols` panels a row."""
    cols = max(1, min(cols, n))
    return -(-n // cols), cols


def _small_multiples(fig: Figure, stats: ActivationStatsData, layers: Sequence[int], draw: Any, cols: int,
                     top: float, bottom: float, log: bool = False) -> list[Axes]:
    """One small panel per layer (named in its title), `cols` a row, between the heights `top` and `bottom`
    (inches from the figure's top), sharing x and y: the same scale makes layers compare at a glance, and no
    legend is needed far from the lines. Laid out by hand (constrained layout of ~20 axes was most of the
    figure's time), and log axes get major ticks only, for the same reason."""
    height = fig.get_figheight()
    rows = -(-len(layers) // cols)
    grid = fig.add_gridspec(rows, cols, left=0.04, right=0.99, top=1 - top / height, bottom=bottom / height,
                            wspace=0.08, hspace=0.45)
    axes: list[Axes] = []
    for k, j in enumerate(layers):
        r, c = divmod(k, cols)
        ax = fig.add_subplot(grid[r, c], sharex=axes[0] if axes else None, sharey=axes[0] if axes else None)
        draw(ax, j)
        ax.set_title(_text(stats.layers[j]), fontsize=9, pad=3)
        ax.tick_params(labelsize=7, labelleft=c == 0)
        ax.grid(alpha=0.3)
        axes.append(ax)
    if log and axes:
        axes[0].set_yscale("log")
        axes[0].yaxis.set_minor_locator(NullLocator())
        axes[0].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    return axes


def plot_overview(stats: ActivationStatsData) -> Figure:
    """Every layer at once: small multiples of each layer's mean and std (one panel per layer, shared
    scales), and heat maps (one row per layer) of fastai's near-zero share, of the share actually near zero
    (|x| <= 0.05, where the run recorded it) and of the dead channels, so the layer that collapses first
    stands out. Each heat map says what its dark colour means."""
    n = len(stats.layers)
    rows, cols = _panel_grid(n)
    panels, heat = 1.45 * rows, 1.3 + 0.2 * n
    fig = Figure(figsize=(13, 0.45 + panels + 0.75 + heat + 0.5))

    def draw(ax: Axes, j: int) -> None:
        ax.axhline(0, color="0.6", lw=0.6)
        ax.plot(stats.steps, stats.mean[:, j], color="C0", lw=1.1, label="mean")
        ax.plot(stats.steps, stats.std[:, j], color="C1", lw=1.1, label="std")

    _small_multiples(fig, stats, range(n), draw, cols, top=0.45, bottom=0.75 + heat + 0.5)
    fig.text(0.5, 1 - 0.12 / fig.get_figheight(), "mean (blue) and std (orange) of the activations per step: one "
             "panel per layer, shared scales", ha="center", va="top", fontsize=11)
    # fastai's near zero, and where recorded the share actually near zero (|x| <= 0.05), which is the
    # same after a ReLU and far lower before one, then the dead channels.
    actual = getattr(stats, "abs_near_zero", None)
    maps = [(stats.near_zero, "% near zero (<= 0.05, fastai's)\nbefore an activation: every negative value too")]
    if actual is not None:
        maps.append((actual, "% actually near zero (|x| <= 0.05)\nblank: not measurable with that range"))
    maps.append((stats.dead, "% dead channels (<= 0 over the whole batch)\ndark: no dead channel"))
    grid = fig.add_gridspec(1, len(maps), left=0.09, right=0.97, top=(heat + 0.5) / fig.get_figheight(),
                            bottom=0.5 / fig.get_figheight(), wspace=0.12 if len(maps) == 3 else 0.32)
    for k, (values, title) in enumerate(maps):
        ax = fig.add_subplot(grid[0, k])
        im = _layer_heatmap(ax, values, stats, title, "magma")
        if k:
            ax.tick_params(labelleft=False)
        fig.colorbar(im, ax=ax, label="% (dark: 0)", pad=0.01)
    dead = stats.dead[np.isfinite(stats.dead)]
    if dead.size and not dead.any():
        _empty_note(ax, "no dead channel in any layer\nat any recorded step")
    return fig


def plot_grad_stats(stats: ActivationStatsData) -> Figure:
    """Per layer with parameters, in small multiples on shared log scales: the gradient L2 norm (top block)
    and the update/weight ratio (bottom block) per step.

    The dashed line marks an update ratio of 1e-3, a common rule of thumb for a healthy learning rate:
    far above it the weights are thrashed each step, far below it the layer barely learns.
    Raises ConfigError when no layer has gradient statistics (e.g. grad_stats=False).
    """
    has = [j for j in range(len(stats.layers))
           if np.isfinite(stats.grad_norm[:, j]).any() or np.isfinite(stats.update_ratio[:, j]).any()]
    if not has or stats.n_steps == 0:
        raise ConfigError("this run recorded no gradient statistics (no layer with parameters, or "
                          "ActivationStats(grad_stats=False))")
    rows, cols = _panel_grid(len(has))
    block = 0.45 + 1.45 * rows + 0.3
    fig = Figure(figsize=(13, 2 * block))

    def norm(ax: Axes, j: int) -> None:
        ax.plot(stats.steps, stats.grad_norm[:, j], color="C0", lw=1.1)

    def ratio(ax: Axes, j: int) -> None:
        ax.plot(stats.steps, stats.update_ratio[:, j], color="C2", lw=1.1)
        ax.axhline(_UPDATE_RATIO_REF, color="k", ls="--", lw=0.8)

    _small_multiples(fig, stats, has, norm, cols, top=0.45, bottom=block + 0.3, log=True)
    _small_multiples(fig, stats, has, ratio, cols, top=block + 0.45, bottom=0.3, log=True)
    height = fig.get_figheight()
    for at, text in ((0.12, "gradient L2 norm per layer with parameters (shared log scale)"),
                     (block + 0.12, "update / weight ratio per step (shared log scale; dashed: 1e-3, the rule "
                                    "of thumb)")):
        fig.text(0.5, 1 - at / height, text, ha="center", va="top", fontsize=11)
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
    # A centred mean, not fastai's moving average: that one trails a falling loss by its window, so it
    # drew the curve above every raw point of the first steps. Short runs get a shorter window.
    window = int(np.clip(loss.size // 20, 1, 50)) | 1
    ax_step.plot(x, loss, color="C0", alpha=0.3, lw=0.8, label="train loss")
    ax_step.plot(x, smooth_centred(loss, window), color="C0", lw=1.5,
                 label=f"train loss (centred mean of {window} steps)")
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
