"""report.html: one self-contained page per run folder, readable offline on any machine.

    write_report("runs/20261127-014500-mnist")     # -> runs/.../report.html

Self-contained means: figures are PNGs embedded as base64 data URIs, the CSS is inline, and there is
no script and no external URL at all (a Content-Security-Policy meta tag forbids loading anything
else, so even a mistake here could not make the page fetch or run something). Every piece of text that
comes from the run (layer names, config values, paths, findings) goes through `html.escape`, because a
run folder may come from anywhere and a layer may be named `<script>`.

Sections appear only for the files the run holds: a run without stats.npz gets config, metrics and loss.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable, Iterable
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from convscope._version import __version__
from convscope.errors import ConvscopeError, RunError
from convscope.plots import activations as plots
from convscope.plots.schedules import plot_lr_find, plot_schedule
from convscope.runs.findings import SEVERITIES
from convscope.runs.run import Run, load_run
from convscope.runs.stats_data import ActivationStatsData
from convscope.runs.store import atomic_write_bytes, read_json

__all__ = ["REPORT_FILE", "render_report", "write_report"]

REPORT_FILE = "report.html"
PARTIAL_REPORT_FILE = "report.partial.html"  # a report missing a damaged file's part: never replaces report.html
_DPI = 80  # ~45 figures per run: 80 dpi keeps them legible and the page at a few MB
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A finding row's background, one per runs.findings.SEVERITIES (the CSS rules below are made from it).
_SEVERITY_BACKGROUND = {"high": "#fbe3e3", "medium": "#fff3d6", "low": "#e6f0fb", "info": "#eaf6ea"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1300px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
details { border: 1px solid #ddd; border-radius: 4px; margin: 0.4em 0; padding: 0.3em 0.8em; }
summary { cursor: pointer; font-weight: 600; } summary .muted { font-weight: normal; }
.note { color: #666; font-style: italic; } .muted { color: #666; }
.badge { display: inline-block; border-radius: 3px; padding: 0 0.4em; margin-left: 0.5em; font-size: 0.8em;
         font-weight: normal; background: #eee; }
code { background: #f3f3f3; padding: 0 0.2em; }
""" + "".join(f".sev-{severity} {{ background: {color}; }}\n" for severity, color in _SEVERITY_BACKGROUND.items())
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# ---------------------------------------------------------------------------- small builders
def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """A value as short text: floats to 4 significant digits, containers as compact JSON."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str, separators=(", ", ": "))
    return str(value)


def _flatten(obj: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def _kv_table(rows: Iterable[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>" if body else '<p class="note">(empty)</p>'


def _table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_e(_fmt(r.get(c, "")))}</td>' if isinstance(r.get(c), (int, float))
                         else f"<td>{_e(_fmt(r.get(c, '')))}</td>" for c in columns) + "</tr>"
        for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _img(data: bytes, alt: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<img src="{uri}" alt="{_e(alt)}" loading="lazy">'


def _figure(make: Callable[[], Figure], alt: str) -> str:
    """Render a plot function's figure to an embedded PNG; a plot that cannot be drawn becomes a note."""
    try:
        fig = make()
    except ConvscopeError as exc:
        return _note(f"{alt}: {exc}")
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=_DPI)
    finally:
        fig.clf()  # drop the artists now: a report renders dozens of figures
    return _img(buf.getvalue(), alt)


# ---------------------------------------------------------------------------- run files
def _read_findings(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """findings.json as a list of dicts sorted by severity, and a warning if the file is unusable."""
    if not path.exists():
        return [], None
    try:
        data = read_json(path)
    except RunError as exc:
        return [], str(exc)
    if not isinstance(data, list) or not all(isinstance(f, dict) for f in data):
        return [], f"{path} is not a list of objects; the file is damaged"
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(data, key=lambda f: rank.get(str(f.get("severity", "")).lower(), len(rank))), None


def _severity_class(finding: dict[str, Any]) -> str:
    sev = str(finding.get("severity", "")).lower()
    return f"sev-{sev}" if sev in SEVERITIES else "sev-other"  # never put run text in a class name


def _steps_text(steps: Any) -> str:
    if isinstance(steps, (list, tuple)) and len(steps) == 2:  # diagnose writes [first, last]
        return f"{steps[0]} to {steps[1]}"
    if isinstance(steps, (list, tuple)) and len(steps) > 6:
        return f"{steps[0]} .. {steps[-1]} ({len(steps)} steps)"
    if isinstance(steps, (list, tuple)):
        return ", ".join(str(s) for s in steps)
    return "" if steps is None else _fmt(steps)


def _evidence_text(evidence: Any) -> str:
    if isinstance(evidence, dict):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in evidence.items())
    return "" if evidence is None else _fmt(evidence)


def _findings_table(findings: list[dict[str, Any]], with_layer: bool = True) -> str:
    cols = ["severity", "rule", *(["layer"] if with_layer else []), "steps", "evidence", "remedy"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = []
    for f in findings:
        cells = {"severity": f.get("severity", ""), "rule": f.get("rule", ""), "layer": f.get("layer") or "",
                 "steps": _steps_text(f.get("steps")), "evidence": _evidence_text(f.get("evidence")),
                 "remedy": f.get("remedy", "")}
        rows.append(f'<tr class="{_severity_class(f)}">' + "".join(f"<td>{_e(cells[c])}</td>" for c in cols) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _embedded_png(path: Path, alt: str) -> str:
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        return _note(f"{path.name} is not a PNG image; not shown")
    return _img(data, alt)


def _names_layer(finding: dict[str, Any], layer: str) -> bool:
    layers = finding.get("layers")
    return finding.get("layer") == layer or (isinstance(layers, list) and layer in layers)


# ---------------------------------------------------------------------------- sections
def _training_section(run: Run) -> list[str]:
    out = ["<h2>Training</h2>"]
    if run.metrics:
        columns = list(dict.fromkeys(k for row in run.metrics for k in row))
        out += ["<h3>Metrics per epoch</h3>", _table(columns, run.metrics)]
    else:
        out.append(_note("no epoch metrics yet (metrics.jsonl is missing or empty)"))
    if len(run.steps.get("loss", [])) or run.metrics:
        out.append(_figure(lambda: plots.plot_loss(run.steps, run.metrics), "loss"))
    if len(run.steps.get("lr", [])):
        out.append(_figure(lambda: plot_schedule(run.steps), "learning rate and momentum schedule"))
    return out


def _tools_section(path: Path, problems: list[str]) -> list[str]:
    """lr-find / bs-sweep results written into the run folder by those commands."""
    out = []
    png, js = path / "lr_find.png", path / "lr_find.json"
    if png.exists() or js.exists():
        out.append("<h3>Learning-rate finder</h3>")
        data: Any = None
        if js.exists():
            try:
                data = read_json(js)
            except RunError as exc:
                problems.append(str(exc))
                out.append(_note(str(exc)))
            if data is not None and not (isinstance(data, dict) and isinstance(data.get("sweeps"), list)):
                problems.append(f"{js} is not an LR-finder result (a JSON object with its sweeps); the file is damaged")
                out.append(_note(problems[-1]))
                data = None
        if png.exists():
            out.append(_embedded_png(png, "learning-rate finder"))
        elif isinstance(data, dict):
            out.append(_figure(lambda: plot_lr_find(data), "learning-rate finder"))
        if isinstance(data, dict):
            # The per-step sweeps are in the figure; the table keeps the suggestions and the reasoning.
            rows = _flatten({k: v for k, v in data.items() if k != "sweeps"})
            out.append(_kv_table((k, f"[{len(v)} values]" if isinstance(v, list) and len(v) > 8 else v)
                                 for k, v in rows))
    if (path / "bs_sweep.png").exists():
        out += ["<h3>Batch-size sweep</h3>", _embedded_png(path / "bs_sweep.png", "batch-size sweep")]
    return (["<h2>Tools</h2>"] + out) if out else []


def _layer_digest(stats: ActivationStatsData, layer: str) -> str:
    """A few numbers beside the closed section, so the layer worth opening shows without opening all."""
    i = stats.index(layer)
    if stats.n_steps == 0:
        return ""
    near = f"near zero {100 * stats.near_zero[-1, i]:.0f}%"
    # Before an activation fastai's near zero counts every negative value: say what it is made of.
    signed = [(label, values[-1, i]) for label, values in (("below zero", stats.negative),
                                                           ("|x| <= 0.05", stats.abs_near_zero))
              if values is not None and np.isfinite(values[-1, i])]
    if plots.is_pre_activation(stats, i) and signed:
        near += " (fastai's <= 0.05: " + ", ".join(f"{label} {100 * v:.0f}%" for label, v in signed) + ")"
    return (f"last step: mean {stats.mean[-1, i]:.3g}, std {stats.std[-1, i]:.3g}, "
            f"{near}, dead channels {100 * stats.dead[-1, i]:.0f}%")


def frozen_from(stats: ActivationStatsData) -> dict[str, int]:
    """Layers frozen part-way (train/freeze.py) and the first recorded step without their gradient: their
    gradient norm is finite at first and NaN from some step to the end (a layer without weights is NaN
    throughout, and an unfrozen layer never turns NaN)."""
    out = {}
    for i, layer in enumerate(stats.layers):
        finite = np.isfinite(stats.grad_norm[:, i])
        if finite.any() and not finite[-1]:
            last = int(np.flatnonzero(finite)[-1])
            out[layer] = int(stats.steps[last + 1])
    return out


def _frozen_note(stats: ActivationStatsData) -> list[str]:
    frozen = frozen_from(stats)
    if not frozen:
        return []
    by_step: dict[int, list[str]] = {}
    for layer, step in frozen.items():
        by_step.setdefault(step, []).append(layer)
    parts = "; ".join(f"{', '.join(layers)} from step {step}" for step, layers in sorted(by_step.items()))
    return [f'<p class="muted">Frozen part-way (no gradient, no update; their lines stop there): {_e(parts)}.</p>']


def _interval_note(stats: ActivationStatsData) -> str:
    """Why the rows are this sparse, when the interval was chosen from measured time (stats/interval.py)."""
    i = stats.interval
    if not {"row_ms", "step_ms", "budget"} <= set(i):
        return ""
    return (f": chosen to keep the statistics within {i['budget']:.0%} of training time, a recorded row having "
            f"cost {i['row_ms']:.1f} ms on {i['step_ms']:.1f} ms steps")


def _stats_section(stats: ActivationStatsData, findings: list[dict[str, Any]]) -> list[str]:
    out = ["<h2>Activation statistics</h2>",
           f'<p class="muted">{len(stats.layers)} layers, {stats.n_steps} recorded steps '
           f"(one in {stats.every}{_interval_note(stats)}), {stats.bins} histogram bins.</p>",
           _figure(lambda: plots.plot_overview(stats), "overview of all layers"),
           "<h2>Gradients</h2>",
           _figure(lambda: plots.plot_grad_stats(stats), "gradient norm and update ratio"),
           *_frozen_note(stats),
           "<h2>Layers</h2>"]
    for name in stats.layers:
        mine = [f for f in findings if _names_layer(f, name)]  # sorted worst first
        plural = "s" if len(mine) > 1 else ""
        badge = f'<span class="badge {_severity_class(mine[0])}">{len(mine)} finding{plural}</span>' if mine else ""
        out.append(f"<details{' open' if mine else ''}><summary>{_e(name)}{badge}"
                   f'<span class="muted"> {_e(_layer_digest(stats, name))}</span></summary>')
        if mine:
            out.append(_findings_table(mine, with_layer=False))
        # plot_layer_stats, color_dim and plot_dead in one figure: a third of the rendering cost.
        out.append(_figure(lambda n=name: plots.plot_layer(stats, n), f"statistics of layer {name}"))
        out.append("</details>")
    return out


def render_report(run: Run, problems: list[str] | None = None) -> str:
    """The whole report page of a loaded run, as an HTML string.

    What a damaged file of the run leaves out is said on the page, and appended to `problems` (a list) so
    that `write_report` never lets such a page replace a good one.
    """
    problems = [] if problems is None else problems
    title = str(run.config.get("name") or run.path.name)
    findings, findings_warning = _read_findings(run.path / "findings.json")
    if findings_warning:
        problems.append(findings_warning)
    config = {k: v for k, v in run.config.items() if k != "versions"}
    parts = [f"<h1>convscope run: {_e(title)}</h1>", f'<p class="muted">folder: <code>{_e(run.path)}</code></p>']
    if findings_warning:
        parts.append(_note(findings_warning))
    if findings:
        parts += [f"<h2>Findings ({len(findings)})</h2>", _findings_table(findings)]
    # Collapsed: the settings are there to be looked up, and open they filled the first screen.
    settings = _flatten(config)
    parts += ["<h2>Configuration</h2>",
              f"<details><summary>{len(settings)} settings and the versions used</summary>", _kv_table(settings),
              "<h3>Versions</h3>", _kv_table(_flatten(run.config.get("versions") or {})), "</details>"]
    parts += _training_section(run)
    parts += _tools_section(run.path, problems)
    if run.has_stats:
        try:
            stats = run.activation_stats
        except RunError as exc:
            problems.append(str(exc))
            parts += ["<h2>Activation statistics</h2>", _note(str(exc))]
        else:
            parts += _stats_section(stats, findings)
    else:
        parts.append(_note("no activation statistics in this run (stats.npz missing): "
                           "train with ActivationStats to record them"))
    parts.append(f'<p class="muted">written by convscope {_e(__version__)} on '
                 f"{_e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{_e(title)} - convscope report</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Write report.html into a run folder (atomically) and return its path.

    Raises RunError when `run_dir` is not a run folder (missing, or without config.json), and when a file
    of the run is damaged: then report.html is left as it was (a good report is replaced only by a good
    one) and the page without the damaged part is written beside it, as report.partial.html.
    """
    if Path(run_dir).is_file():
        raise RunError(f"{run_dir} is a file, not a run folder; pass the folder that `convscope train` printed")
    run = load_run(run_dir)
    path = run.path / REPORT_FILE
    problems: list[str] = []
    page = render_report(run, problems).encode("utf-8")
    if problems:
        partial = run.path / PARTIAL_REPORT_FILE
        atomic_write_bytes(partial, page)
        kept = f"{REPORT_FILE} is left as it was" if path.exists() else f"no {REPORT_FILE} written"
        raise RunError(f"{problems[0]}; {kept}, the report without it is in {partial}")
    atomic_write_bytes(path, page)
    (run.path / PARTIAL_REPORT_FILE).unlink(missing_ok=True)  # a good report supersedes an earlier partial one
    return path
