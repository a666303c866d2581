"""HTML of a run, its statistics and its findings for Jupyter (`_repr_html_`), figures inline as PNG.

    run = convscope.load_run("runs/book")
    run                       # in a notebook: settings, metrics, findings, the loss and all-layer figures
    run.activation_stats      # layers and steps, the all-layer figure, each layer's last recorded row
    run.findings              # the diagnosis as a table

Everything that comes from the run (names, values, paths) is escaped: a layer may be named `<script>`. The
figures come from convscope.plots (loaded only when a notebook asks for the HTML) and are embedded as base64
PNG data URIs, so a saved notebook shows them without the run folder.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

import numpy as np

from convscope.errors import ConvscopeError

if TYPE_CHECKING:  # the types this module renders import it for their _repr_html_
    from matplotlib.figure import Figure

    from convscope.runs.findings import Finding
    from convscope.runs.run import Run
    from convscope.runs.stats_data import ActivationStatsData

__all__ = ["findings_html", "run_html", "stats_html"]

_DPI = 72  # a notebook cell is ~1000 px wide: the 13-inch figures fit it at this resolution
# The settings a reader compares runs by, shown first (the rest: run.config).
_KEY_SETTINGS = ("dataset", "epochs", "lr", "bs", "bn", "schedule", "model", "recipe", "seed", "stats_every")
_SEVERITY_BACKGROUND = {"high": "#fbe3e3", "medium": "#fff3d6", "low": "#e6f0fb", "info": "#eaf6ea"}


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}" if np.isfinite(value) else "-"  # NaN: not recorded there (a ReLU has no gradient)
    return str(value)


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]], styles: Iterable[str] | None = None) -> str:
    cell = "padding: 0.15em 0.6em; border: 1px solid #ddd; text-align: left"
    head = "".join(f'<th style="{cell}">{_e(c)}</th>' for c in columns)
    styles = iter(styles) if styles is not None else None
    body = "".join(f'<tr style="{next(styles) if styles else ""}">'
                   + "".join(f'<td style="{cell}">{_e(_fmt(v))}</td>' for v in row) + "</tr>" for row in rows)
    return f'<table style="border-collapse: collapse"><tr>{head}</tr>{body}</table>'


def figure_html(make: Callable[[], Figure], alt: str) -> str:
    """A figure as an inline PNG, or a note saying why it cannot be drawn."""
    try:
        fig = make()
    except ConvscopeError as exc:
        return f"<p><i>{_e(alt)}: {_e(exc)}</i></p>"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    fig.clf()
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="{uri}" alt="{_e(alt)}" style="max-width: 100%">'


def findings_html(findings: Sequence[Finding]) -> str:
    """The findings as a table, one row per finding, coloured by severity."""
    if not findings:
        return "<p><i>no findings (the run has not been diagnosed: convscope diagnose RUN)</i></p>"
    rows = [(f.severity, f.rule, f.layer or ", ".join(f.layers), "" if f.steps is None else f"{f.steps[0]} to "
             f"{f.steps[1]}", f.evidence, f.remedy) for f in findings]
    styles = [f"background: {_SEVERITY_BACKGROUND.get(f.severity, '#fff')}" for f in findings]
    return _table(("severity", "rule", "layer", "steps", "evidence", "remedy"), rows, styles)


def stats_html(stats: ActivationStatsData, figure: bool = True) -> str:
    """What was recorded, the all-layer figure, and each layer's last recorded row."""
    from convscope.plots.activations import is_pre_activation, plot_overview

    head = (f"<p><b>activation statistics</b>: {len(stats.layers)} layers, {stats.n_steps} recorded steps "
            f"(one in {stats.every}), {stats.bins} histogram bins</p>")
    if stats.n_steps == 0:
        return head
    # The signed shares (optional fields: None in older run folders), shown where they say something new:
    # before an activation; after a ReLU nothing is below zero and |x| <= 0.05 is fastai's near zero.
    signed = [(name, getattr(stats, name, None)) for name in ("abs_near_zero", "negative")]
    signed = [(name, values) for name, values in signed if values is not None]
    rows = []
    for i, (layer, kind) in enumerate(zip(stats.layers, stats.kinds)):
        lo, hi = stats.hist_range[i]
        shares = [f"{100 * values[-1, i]:.0f}%" if is_pre_activation(stats, i) else "-" for _, values in signed]
        rows.append((layer, kind, stats.mean[-1, i], stats.std[-1, i], f"{100 * stats.near_zero[-1, i]:.0f}%",
                     *shares, f"{100 * stats.dead[-1, i]:.0f}%", stats.grad_norm[-1, i],
                     f"[{lo:g}, {hi:g}]" if hi > lo else "-"))
    titles = {"abs_near_zero": "|x| <= 0.05", "negative": "x < 0"}
    table = _table(("layer", "kind", "mean", "std", "near zero (<= 0.05, fastai's)",
                    *(titles[name] for name, _ in signed), "dead channels", "grad norm", "histogram range"), rows)
    fig = figure_html(lambda: plot_overview(stats), "all layers") if figure else ""
    return head + fig + f"<p>last recorded step ({int(stats.steps[-1])}):</p>" + table


def run_html(run: Run) -> str:
    """The run's key settings, metrics per epoch, findings, loss curve and (with statistics) the all-layer view."""
    from convscope.plots.activations import plot_loss

    name = run.config.get("name") or run.path.name
    settings = [(k, run.config[k]) for k in _KEY_SETTINGS if run.config.get(k) is not None]
    parts = [f"<h3>convscope run {_e(name)}</h3>", f"<p><code>{_e(run.path)}</code></p>",
             _table([k for k, _ in settings], [[v for _, v in settings]]) if settings else ""]
    if run.metrics:
        columns = list(dict.fromkeys(k for row in run.metrics for k in row))
        parts.append(_table(columns, [[row.get(c, "") for c in columns] for row in run.metrics]))
    parts += ["<p><b>findings</b></p>", findings_html(run.findings)]
    if len(np.asarray(run.steps.get("loss", []))) or run.metrics:
        parts.append(figure_html(lambda: plot_loss(run.steps, run.metrics), "loss"))
    if run.has_stats:
        parts.append(stats_html(run.activation_stats))
    return "\n".join(parts)
