"""`convscope compare`: runs side by side in one self-contained page (plotly.js, the page's code and the
runs' data inlined; opens offline). The page is `convscope view`'s, reading its data from the file instead
of a server."""

from __future__ import annotations

import json
import time
from pathlib import Path

from convscope.errors import ConfigError
from convscope.runs.discover import find_runs, study_kind
from convscope.runs.store import atomic_write_bytes
from convscope.view.assets import plotly_js_path, static_text
from convscope.view.data import hist_json, run_json

# Histogram rows kept per layer and run: every layer of every run is inlined, and 400 columns are more
# than a heat map of this width shows.
MAX_HIST_ROWS = 400


def collect_runs(paths: list[str | Path]) -> list[tuple[str, Path]]:
    """(name, folder) of every run the paths name (a study folder: each of its runs), each once, with
    names that tell them apart."""
    found: list[Path] = []
    for p in paths:
        for run in find_runs(p):
            if run.resolve() not in [f.resolve() for f in found]:
                found.append(run)
    names = [run.name for run in found]
    return [(f"{run.parent.name}/{run.name}" if names.count(run.name) > 1 else run.name, run) for run in found]


def _script(code: str) -> str:
    return "<script>\n" + code.replace("</script", "<\\/script") + "\n</script>"


def render_compare(paths: list[str | Path]) -> str:
    """The comparison page's HTML for the runs `paths` name (at least two)."""
    runs = collect_runs(paths)
    if len(runs) < 2:
        raise ConfigError(f"compare needs two runs or more; {', '.join(str(p) for p in paths)} holds one: "
                          "add another run, or pass an lr-study or bs-sweep folder")
    plotly_js = plotly_js_path().read_text(encoding="utf-8")
    data: dict = {"written": time.strftime("%Y-%m-%d %H:%M"), "runs": [], "data": {}, "hist": {}}
    for k, (name, path) in enumerate(runs):
        run_id = str(k)
        one = run_json(path, run_id=run_id, name=name)
        data["runs"].append({"id": run_id, "name": name, "group": str(path.parent), "study": study_kind(path.parent)})
        data["data"][run_id] = one
        layers = one["stats"]["layers"] if one["stats"] else []
        data["hist"][run_id] = {layer: hist_json(path, layer, max_rows=MAX_HIST_ROWS) for layer in layers}
    page = static_text("index.html")
    blob = json.dumps(data, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    inlined = {
        '<script src="plotly.min.js"></script>': _script(plotly_js),
        '<script src="view.js"></script>': (f'<script type="application/json" id="convscope-data">{blob}</script>\n'
                                            + _script(static_text("view.js"))),
        "<title>convscope view</title>": "<title>convscope compare: " + ", ".join(n for n, _ in runs)[:200]
                                         .replace("&", "&amp;").replace("<", "&lt;") + "</title>",
    }
    for tag, replacement in inlined.items():
        if tag not in page:
            raise AssertionError(f"index.html lacks {tag}")  # a bug in the package, not bad input
        page = page.replace(tag, replacement)
    return page


def write_compare(paths: list[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """Write the comparison page to `out`; an existing file is kept unless `overwrite`."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"-o {out} is a folder; name the page's file, e.g. -o {out / 'compare.html'}")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another -o, or pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise ConfigError(f"-o {out}: the folder {out.parent} does not exist; create it or choose another -o")
    page = render_compare(paths)
    atomic_write_bytes(out, page.encode("utf-8"))
    return out
