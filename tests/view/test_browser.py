"""The view and the comparison in a real browser: headless Chromium (Debian's `chromium`) driven by
playwright, never playwright's own browser downloads. `convscope train` and `convscope view` run as two
processes, as a user runs them; the page must show the run growing, with no console error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("plotly", reason="plotly is not installed (pip install 'convscope[view]')")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

WAIT_MS = 180_000  # a generous bound for a busy 2-core machine, so that a broken page fails instead of hanging


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def open_page(browser, url: str):
    """A page at `url` and the list its console errors and uncaught exceptions go to."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.goto(url)
    return page, errors


LOOK = """() => {
  const cell = document.querySelector('[data-run-steps]');
  const plot = document.getElementById('plot-mean');
  const trace = plot && plot.data && plot.data[0];
  return {steps: cell ? Number(cell.dataset.runSteps) : 0, layer: document.getElementById('layer').value,
          x: trace ? Array.from(trace.x) : [], y: trace ? Array.from(trace.y) : []};
}"""


def test_the_console_check_sees_errors(browser, tmp_path):
    """Control: the same listeners on a page that does log an error, and one that throws."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><script>console.error('boom-from-page'); null.x;</script>")
    page, errors = open_page(browser, bad.as_uri())
    page.wait_for_timeout(200)
    assert any("boom-from-page" in e for e in errors) and any(e.startswith("uncaught") for e in errors)
    page.close()


def test_live_view_shows_a_run_growing_while_it_trains(browser, data_dir, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    env = {**os.environ, "CONVSCOPE_DATA": str(data_dir), "OMP_NUM_THREADS": "1"}
    # Ctrl-C must reach the server as a user's Ctrl-C does, however pytest was started: a test run started
    # in the background by a shell without job control (`./.ci/run &`) ignores SIGINT, and an ignored signal
    # stays ignored in every child, so the server would never see the test's Ctrl-C.
    view = subprocess.Popen([sys.executable, "-m", "convscope", "view", str(runs)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Three epochs of full MNIST: far longer than the test, which stops it (Ctrl-C) once it has seen enough.
    train = subprocess.Popen([sys.executable, "-m", "convscope", "train", "--epochs", "3", "--bs", "256",
                              "--stats-every", "4", "--flush-every", "0.5", "--out", str(runs), "--name", "live"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = view.stdout.readline()
        assert "http://127.0.0.1:" in line, line + view.stderr.read()
        url = line.split()[2]
        page, errors = open_page(browser, url + "?poll=400")
        page.wait_for_function(f"(look => look.steps > 0 && look.x.length > 1)(({LOOK})())", timeout=WAIT_MS)
        first = page.evaluate(LOOK)
        page.wait_for_function(f"(look => look.steps > {first['steps']} && look.x.length > {len(first['x'])})"
                               f"(({LOOK})())", timeout=WAIT_MS)
        second = page.evaluate(LOOK)
        assert train.poll() is None, "the run ended before the second look: the test saw a finished run"
        assert second["steps"] > first["steps"] and len(second["x"]) > len(first["x"])
        # what the page drew is what the files hold (they only grow: the page's rows are a prefix of them)
        with np.load(runs / "live" / "stats.npz") as stats:
            i = stats["layers"].tolist().index(second["layer"])
            n = len(second["x"])
            assert len(second["y"]) == n, "the chart's x and y differ in length: it drew a half-merged run"
            assert second["x"] == stats["steps"][:n].tolist() == list(range(0, 4 * n, 4))
            np.testing.assert_allclose(second["y"], stats["mean"][:n, i], rtol=1e-5)
        with np.load(runs / "live" / "steps.npz") as steps:
            assert len(steps["step"]) >= second["steps"]
        assert errors == []
        page.close()
    finally:
        # the run is not this test's subject (its Ctrl-C writes the report, ~10 s here): stop it at once
        train.kill()
        train.wait(timeout=60)
        view.send_signal(signal.SIGINT)  # Ctrl-C: the server stops cleanly
        out, err = view.communicate(timeout=60)
    assert view.returncode == 0 and "stopped" in out and "Traceback" not in err, err


def test_compare_of_the_books_runs_opens_without_console_errors(browser, book_runs, tmp_path):
    from convscope.cli import app

    out = tmp_path / "compare.html"
    result = CliRunner().invoke(app, ["compare", str(book_runs["no-bn"]), str(book_runs["bn"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    page, errors = open_page(browser, out.as_uri())
    page.wait_for_function("document.querySelectorAll('[data-run-steps]').length == 2", timeout=WAIT_MS)
    page.wait_for_function("document.querySelectorAll('#heats .heat').length == 2", timeout=WAIT_MS)
    drawn = page.evaluate("""() => ({
      mean: document.getElementById('plot-mean').data.map(t => ({name: t.name, n: t.x.length})),
      steps: Array.from(document.querySelectorAll('[data-run-steps]')).map(c => Number(c.dataset.runSteps)),
      config: document.getElementById('config').innerText,
      findings: Array.from(document.querySelectorAll('#findings .col')).map(c => c.innerText)})""")
    rows = {}
    for name, run in book_runs.items():
        with np.load(run / "stats.npz") as stats, np.load(run / "steps.npz") as steps:
            rows[name] = (len(stats["steps"]), len(steps["step"]))
    assert drawn["mean"] == [{"name": n, "n": rows[n][0]} for n in ("no-bn", "bn")]
    assert drawn["steps"] == [rows["no-bn"][1], rows["bn"][1]] == [32, 16]
    assert "bn\tfalse\ttrue" in drawn["config"] and "schedule" in drawn["config"]
    for column, name in zip(drawn["findings"], ("no-bn", "bn")):
        rules = [f["rule"] for f in json.loads((book_runs[name] / "findings.json").read_text())]
        assert column.startswith(name) and all(rule in column for rule in rules)
    assert errors == []
    assert out.stat().st_size < 12 * 2**20
    page.close()
