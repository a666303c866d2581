"""Figures of the learning rate: the schedule a fit followed, and an LR-finder sweep with its suggestions.

Both take plain data -- the arrays of steps.npz (`learn.recorder.step_arrays()`), and an LR-finder
result or the dict in a run's lr_find.json -- so they work on a live learner and on a saved run in
another process. Figures are `matplotlib.figure.Figure` objects made without pyplot: nothing global,
no GUI backend needed, and a returned Figure still shows in a notebook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from convscope.errors import ConfigError

# One colour per suggestion, the same in every figure.
_SUGGESTION_COLORS = {"minimum": "C1", "steep": "C2", "valley": "C3", "slide": "C4", "edge": "C5"}


# --------------------------------------------------------------------------- the schedule of a fit
def plot_schedule(steps: Mapping[str, np.ndarray], ax: Sequence[Axes] | None = None) -> Figure:
    """Learning rate and momentum per optimizer step, in two panels side by side.

    `steps` holds 'lr' and optionally 'mom' (or 'momentum'), 'step' (x values; default 0, 1, ...) and
    'epoch' (epoch starts are marked). `ax`: two Axes to draw into (lr, then momentum); default a new
    Figure.
    """
    lr = np.asarray(steps.get("lr", []), dtype=np.float64)
    if lr.size == 0:
        raise ConfigError("no learning rates to plot: the steps hold no 'lr' (has the learner been fit?)")
    mom = steps.get("mom", steps.get("momentum"))
    x = np.asarray(steps["step"]) if "step" in steps else np.arange(len(lr))
    if ax is None:
        fig = Figure(figsize=(10, 3.2), layout="constrained")
        ax_lr, ax_mom = fig.subplots(1, 2)
    else:
        if len(ax) != 2:
            raise ConfigError(f"plot_schedule draws two panels (lr, momentum): pass two Axes, got {len(ax)}")
        ax_lr, ax_mom = ax
        fig = ax_lr.figure
    ax_lr.plot(x, lr, color="C0")
    ax_lr.set_title(f"learning rate (peak {lr.max():.3g})")
    if mom is not None and len(mom):
        ax_mom.plot(x, np.asarray(mom, dtype=np.float64), color="C1")
        ax_mom.set_title("momentum (SGD momentum or Adam's beta1)")
    else:
        ax_mom.set_title("momentum: not recorded")
    epochs = np.asarray(steps["epoch"]) if "epoch" in steps else None
    for a in (ax_lr, ax_mom):
        a.set_xlabel("step")
        a.grid(alpha=0.3)
        if epochs is not None and len(epochs) == len(x):
            for start in x[1:][np.diff(epochs) != 0]:  # first step of each later epoch
                a.axvline(start, color="0.6", lw=0.8, ls=":")
    return fig


# --------------------------------------------------------------------------- the LR finder
def _as_dict(result: Any) -> dict[str, Any]:
    """An LRFindResult (anything with to_dict) or the dict of a saved lr_find.json."""
    data = result.to_dict() if hasattr(result, "to_dict") else result
    if not isinstance(data, Mapping) or not data.get("sweeps"):
        raise ConfigError("plot_lr_find needs an LR-finder result or the dict of lr_find.json with 'sweeps'")
    return dict(data)


def _floats(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)  # JSON null = NaN


def _y_limits(sweeps: list[dict[str, Any]]) -> tuple[float, float]:
    """Show the fall and the start of the climb; a diverged tail would squash everything else flat."""
    lows, starts = [], []
    for sw in sweeps:
        curves = [_floats(sw["losses"]), _floats(sw["raw_losses"])]
        finite = np.concatenate([c[np.isfinite(c)] for c in curves])
        if finite.size:
            lows.append(finite.min())
        head = _floats(sw["losses"])[: max(1, len(sw["losses"]) // 10)]
        starts.extend(head[np.isfinite(head)])
    low = min(lows) if lows else 0.0
    top = max(starts) if starts else low + 1.0
    pad = 0.05 * (top - low) if top > low else 1.0
    return low - pad, top + 4 * pad


def plot_lr_find(result: Any) -> Figure:
    """Loss against learning rate (log scale) for every sweep, with each suggestion marked.

    Per sweep: the smoothed loss (what the suggestions read) and, faint, the raw loss. Per suggestion:
    a marker on each sweep's curve, the median in the legend, and a band from the smallest to the
    largest value over the sweeps. The recommended lr_max is the dashed vertical line.
    """
    data = _as_dict(result)
    sweeps = data["sweeps"]
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    for k, sw in enumerate(sweeps):
        lrs = np.asarray(sw["lrs"], dtype=np.float64)
        ax.plot(lrs, _floats(sw["raw_losses"]), color="C0", lw=0.6, alpha=0.25,
                label="raw loss" if k == 0 else None)
        ax.plot(lrs, _floats(sw["losses"]), color="C0", lw=1.5, alpha=0.9 if len(sweeps) == 1 else 0.6,
                label=f"smoothed loss ({len(sweeps)} sweep{'s' if len(sweeps) > 1 else ''})" if k == 0 else None)
    summary = data.get("suggestions", {})
    for name, color in _SUGGESTION_COLORS.items():
        points = [sw["edge"] if name == "edge" else sw["suggestions"].get(name) for sw in sweeps]
        points = [p for p in points if p is not None]
        if not points:
            continue
        values = np.array([p["lr"] for p in points])
        for sw, p in zip(sweeps, points):
            ax.plot(p["lr"], _marker_y(sw, name, p), "o", color=color, ms=7, mec="white", mew=0.8, zorder=5)
        med = summary.get(name, {}).get("median", float(np.exp(np.median(np.log(values)))))
        label = f"{name} {med:.3g}"
        lo, hi = values.min(), values.max()
        if hi > lo * (1 + 1e-9):  # sweeps disagree: show how far
            ax.axvspan(lo, hi, color=color, alpha=0.15, lw=0)
            label += f" ({lo:.3g} to {hi:.3g})"
        ax.plot([], [], "o", color=color, label=label)  # one legend entry per suggestion
    rec = data.get("recommended_lr_max")
    if rec is not None:
        ax.axvline(rec, color="k", ls="--", lw=1.2, label=f"recommended lr_max {rec:.3g}")
    ax.set_xscale("log")
    ax.set_ylim(*_y_limits(sweeps))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR finder: loss as the learning rate grows each step")
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(loc="lower left", fontsize=9)
    return fig


def _marker_y(sweep: Mapping[str, Any], name: str, point: Mapping[str, Any]) -> float:
    """Where a suggestion sits on the curve it was read from: the raw loss's lag-free mean for 'edge',
    otherwise the smoothed loss at the suggested lr (minimum's lr is a tenth of its point's lr)."""
    if name == "edge":
        return float(point["loss"])
    lrs, losses = np.asarray(sweep["lrs"], dtype=np.float64), _floats(sweep["losses"])
    ok = np.isfinite(losses)
    return float(np.interp(np.log(point["lr"]), np.log(lrs[ok]), losses[ok]))
