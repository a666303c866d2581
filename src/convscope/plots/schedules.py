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
from convscope.plots.activations import smooth_centred


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
    """Loss against learning rate (log scale) for every sweep, with the suggestions that matter marked.

    Per sweep: the raw loss (faint) and its centred running mean over a quarter of a decade of lr (no lag:
    the finder's own moving average, which the fastai suggestions read, trails the raw loss by up to decades
    of lr on a short sweep, so drawn it misplaces everything). Marked, each explained in the legend: `edge`
    (where the raw loss stops falling; a band shows its spread over the sweeps), the recommended lr_max (a
    fifth of it, dashed) and fastai's `valley` and `steep`. `minimum` and `slide` are listed in the legend
    with their values but not drawn: four more markers on one curve said less than the table does.
    """
    data = _as_dict(result)
    sweeps = data["sweeps"]
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.subplots()
    centred = []
    for k, sw in enumerate(sweeps):
        lrs = np.asarray(sw["lrs"], dtype=np.float64)
        raw = _floats(sw["raw_losses"])
        curve = smooth_centred(raw, _quarter_decade(lrs))
        centred.append((lrs, curve))
        ax.plot(lrs, raw, color="C0", lw=0.6, alpha=0.3, label="raw loss" if k == 0 else None)
        ax.plot(lrs, curve, color="C0", lw=1.5, alpha=0.9 if len(sweeps) == 1 else 0.6,
                label=f"centred mean over 1/4 decade ({len(sweeps)} sweep{'s' if len(sweeps) > 1 else ''})"
                if k == 0 else None)
    summary = data.get("suggestions", {})
    for name, (color, meaning) in _DRAWN.items():
        values = _suggested(sweeps, name)
        if values.size == 0:
            continue
        med = summary.get(name, {}).get("median", float(np.exp(np.median(np.log(values)))))
        label = f"{name} {med:.3g}: {meaning}"
        lo, hi = values.min(), values.max()
        if name == "edge" and hi > lo * (1 + 1e-9):  # sweeps disagree: show how far
            ax.axvspan(lo, hi, color=color, alpha=0.15, lw=0)
            label += f" (band: {lo:.3g} to {hi:.3g} over the sweeps)"
        ax.plot(med, _on_curve(centred, med), "o", color=color, ms=8, mec="white", mew=0.8, zorder=5, label=label)
    rec = data.get("recommended_lr_max")
    if rec is not None:
        ax.axvline(rec, color="k", ls="--", lw=1.2, label=f"recommended lr_max {rec:.3g} for 1cycle: edge / 5")
    listed = [f"{name} {summary[name]['median']:.3g}" for name in ("minimum", "slide")
              if isinstance(summary.get(name), Mapping) and "median" in summary[name]]
    if listed:
        ax.plot([], [], " ", label=f"not drawn (see the table): {', '.join(listed)}")
    ax.set_xscale("log")
    ax.set_ylim(*_y_limits(sweeps))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR finder: loss as the learning rate grows each step")
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(loc="lower left", fontsize=8)
    return fig


# The suggestions drawn on the figure, each with its colour and what it marks.
_DRAWN = {
    "edge": ("C3", "raw loss stops falling (no lag)"),
    "valley": ("C2", "fastai's: middle of the longest fall of its lagged curve"),
    "steep": ("C1", "fastai's: steepest fall of its lagged curve"),
}


def _quarter_decade(lrs: np.ndarray) -> int:
    """Points per quarter of a decade of lr on this sweep (at least 3, odd: a centred window)."""
    ok = lrs[np.isfinite(lrs) & (lrs > 0)]
    span = np.log10(ok[-1] / ok[0]) if ok.size > 1 and ok[-1] > ok[0] else 1.0
    return max(3, int(round(0.25 * (len(lrs) - 1) / span)) | 1)


def _suggested(sweeps: list[dict[str, Any]], name: str) -> np.ndarray:
    points = [sw.get("edge") if name == "edge" else sw.get("suggestions", {}).get(name) for sw in sweeps]
    return np.array([p["lr"] for p in points if p is not None], dtype=np.float64)


def _on_curve(centred: list[tuple[np.ndarray, np.ndarray]], lr: float) -> float:
    """The mean over the sweeps of their centred curves at `lr`, where the marker sits."""
    ys = []
    for lrs, curve in centred:
        ok = np.isfinite(curve) & (lrs > 0)
        if ok.sum() >= 2:
            ys.append(float(np.interp(np.log(lr), np.log(lrs[ok]), curve[ok])))
    return float(np.mean(ys)) if ys else float("nan")
