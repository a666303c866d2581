"""Takes docs/screenshots/view.png (the live view, mid-training) and compare.png (the comparison page) from
real runs, in headless Chromium (the system's `chromium`, driven by playwright).

    CONVSCOPE_DATA=../shared/data python docs/screenshots/take.py [--work /tmp/shots]

The book's two runs on the first 16,384 MNIST training images: no BatchNorm at a constant lr of 0.06 and
bs 64 (the failing run, trained first), and BatchNorm with 1cycle at bs 128, shot while it trains (its
files flushed every second). Both PNGs are reduced to 256 colours to stay small.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
COMMON = ["--limit-train", "16384", "--stats-every", "4"]


def convscope(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "convscope", *args], **kwargs)


def shrink(path: Path) -> None:
    with Image.open(path) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def shoot(browser, url: str, out: Path, ready: str, height: int = 2600) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": height})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_function(ready, timeout=300_000)
    page.wait_for_timeout(1500)  # the last poll drawn
    page.screenshot(path=str(out), full_page=True)
    page.close()
    if errors:
        sys.exit(f"console errors on {url}: {errors}")
    shrink(out)
    print(f"{out}: {out.stat().st_size // 1024} KB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default=None, help="folder for the runs [default: a temporary one]")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="convscope-shots-"))
    runs = work / "runs"
    if runs.exists():
        shutil.rmtree(runs)
    convscope("train", "--no-bn", "--schedule", "constant", "--bs", "64", "--lr", "0.06", *COMMON, "--out", str(runs),
              "--name", "no-bn-constant-bs64", stdout=subprocess.DEVNULL).wait()
    view = convscope("view", str(runs), stdout=subprocess.PIPE, text=True)
    url = view.stdout.readline().split()[2]
    train = convscope("train", "--bs", "128", "--epochs", "3", "--flush-every", "1", *COMMON, "--out", str(runs),
                      "--name", "bn-1cycle-bs128", stdout=subprocess.DEVNULL)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            # mid-training: the BN run has passed its first epoch and is still going
            shoot(browser, url + "?poll=1000&layer=conv2.act", HERE / "view.png",
                  "(steps => steps.length == 2 && steps.every(n => n > 160))(Array.from("
                  "document.querySelectorAll('[data-run-steps]')).map(c => +c.dataset.runSteps))")
            train.send_signal(signal.SIGINT)
            train.wait()
            page = work / "compare.html"
            convscope("compare", str(runs / "no-bn-constant-bs64"), str(runs / "bn-1cycle-bs128"), "-o", str(page),
                      "--overwrite").wait()
            shoot(browser, page.as_uri() + "?layer=conv2.act", HERE / "compare.png",
                  "document.querySelectorAll('#heats .heat').length == 2")
            browser.close()
    finally:
        if train.poll() is None:
            train.send_signal(signal.SIGINT)
            train.wait()
        view.send_signal(signal.SIGINT)
        view.wait()


if __name__ == "__main__":
    main()
