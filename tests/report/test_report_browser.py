"""The report of a real run in a real browser (headless Chromium): it renders, logs no console error,
and its DOM holds every figure. Skipped where Chromium is not installed (`apt-get install chromium`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
# The console messages of the page, as Chromium logs them with --enable-logging=stderr.
CONSOLE = re.compile(r"CONSOLE|Uncaught|Refused to|Content.Security.Policy", re.IGNORECASE)


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", *args,
           page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def console_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if CONSOLE.search(line)]


def test_the_console_check_sees_errors(tmp_path):
    """Control: the same check on a page that does log an error (so a pass below means something)."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><script>console.error("boom-from-page")</script></body></html>')
    proc = chromium(bad, tmp_path, "--dump-dom")
    assert any("boom-from-page" in line for line in console_lines(proc)), proc.stderr[-3000:]


def test_report_renders_without_console_errors(trained, stats, tmp_path):
    report = trained.run_dir / "report.html"
    shot = tmp_path / "report.png"
    proc = chromium(report, tmp_path, f"--screenshot={shot}", "--window-size=1200,2000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert console_lines(proc) == []
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1200, 2000)
        colors = rgb.getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) > 500, "a blank or flat screenshot"
        white = max(count for count, color in colors if color == (255, 255, 255))
        assert white < 0.9 * rgb.size[0] * rgb.size[1], "the page is (almost) all white"

    dom = chromium(report, tmp_path, "--dump-dom")
    assert dom.returncode == 0 and console_lines(dom) == []
    images = re.findall(r"<img\b[^>]*>", dom.stdout)
    assert len(images) == 4 + len(stats.layers)  # loss, schedule, overview, gradients, one per layer
    assert all('src="data:image/png;base64,' in tag for tag in images)
    assert "<script" not in dom.stdout
