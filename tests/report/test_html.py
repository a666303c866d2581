"""report.html: self-contained (embedded PNGs, no URL, no script), escaped, and built from what the run has."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from convscope.cli import app
from convscope.errors import RunError
from convscope.report import write_report

DATA_URI = re.compile(r'data:image/png;base64,([A-Za-z0-9+/=]+)')
LAYERS = ["conv1.conv", "conv1.act", "conv2.act"]  # a few layers keep the reports written here quick


def page(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def without_images(html: str) -> str:
    """The page minus its base64 payloads (which may spell anything, 'http' included, by chance)."""
    return DATA_URI.sub("data:image/png;base64,", html)


def test_train_wrote_a_report_with_every_figure(trained, stats):
    html = page(trained.run_dir / "report.html")
    images = DATA_URI.findall(html)
    # loss, lr/momentum schedule, overview, gradients, and one figure per layer
    assert len(images) == 4 + len(stats.layers) == html.count("<img ")
    for name in stats.layers:
        assert f"<summary>{name}" in html
    assert "<h2>Configuration</h2>" in html and "Metrics per epoch" in html and "<th>torch</th>" in html


def test_every_image_is_a_valid_embedded_png(trained):
    for payload in DATA_URI.findall(page(trained.run_dir / "report.html")):
        data = base64.b64decode(payload, validate=True)
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as im:
            im.verify()


def test_nothing_is_loaded_from_outside_and_nothing_runs(trained):
    html = without_images(page(trained.run_dir / "report.html"))
    assert "http://" not in html and "https://" not in html and 'src="//' not in html
    assert "<script" not in html.lower() and "<link" not in html.lower() and "url(" not in html
    assert all(src.startswith("data:") for src in re.findall(r'(?:src|href)="([^"]*)"', html))
    assert "default-src 'none'" in html  # the CSP that forbids loading anything else


def test_run_text_is_escaped(run_copy):
    evil = '<script>alert("x")</script>'
    run = run_copy(LAYERS, rename={"conv1.act": evil, "conv2.act": "a&b <i>"})
    config = json.loads((run / "config.json").read_text())
    config["name"] = "<b>bold</b> & co"
    (run / "config.json").write_text(json.dumps(config))
    (run / "findings.json").write_text(json.dumps([
        {"rule": "r<1>", "severity": "high", "layer": evil, "steps": [3, 7], "evidence": "x < y & z",
         "remedy": "<img src=x onerror=alert(1)>"}]))
    html = page(write_report(run))
    text = without_images(html)
    assert "<script" not in text and "<i>" not in text and "<b>bold" not in text and "onerror=alert(1)>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "a&amp;b &lt;i&gt;" in text and "&lt;b&gt;bold&lt;/b&gt; &amp; co" in text
    assert "x &lt; y &amp; z" in text and "&lt;img src=x onerror=alert(1)&gt;" in text


def test_findings_table_on_top_and_beside_their_layer(run_copy):
    run = run_copy(LAYERS)
    findings = [
        {"rule": "near_zero_activations", "severity": "medium", "layer": "conv2.act", "steps": [10, 119],
         "evidence": "62% of activations <= 0.05", "remedy": "add BatchNorm"},
        {"rule": "loss_spike", "severity": "high", "layer": None, "steps": None, "evidence": "loss x3",
         "remedy": "lower lr"},
    ]
    (run / "findings.json").write_text(json.dumps(findings))
    html = page(write_report(run))
    top = html[: html.index("<h2>Configuration</h2>")]
    assert "<h2>Findings (2)</h2>" in top
    assert top.index("loss_spike") < top.index("near_zero_activations")  # worst first
    assert "10 to 119" in top and "add BatchNorm" in top
    section = html[html.index("<details open><summary>conv2.act"):]
    section = section[: section.index("</details>")]
    assert "near_zero_activations" in section and "1 finding<" in section and "loss_spike" not in section
    assert "<details><summary>conv1.conv" in html  # layers without findings stay closed


def test_unreadable_findings_keep_the_old_report_and_go_into_a_partial_one(run_copy):
    run = run_copy(LAYERS)
    (run / "report.html").write_text("old")
    (run / "findings.json").write_text('{"not": "a list"}')
    with pytest.raises(RunError, match=r"findings.json is not a list of objects; .*report.html is left as it was"):
        write_report(run)
    assert (run / "report.html").read_text() == "old"  # a good report is replaced only by a good one
    html = page(run / "report.partial.html")
    assert "not a list of objects" in html and "<h2>Findings" not in html
    (run / "findings.json").unlink()
    write_report(run)  # the damage mended: the whole report replaces the old one and the partial one goes
    assert page(run / "report.html").startswith("<!DOCTYPE html>") and not (run / "report.partial.html").exists()


def test_run_without_stats_gets_the_sections_it_has(run_copy):
    run = run_copy()
    (run / "stats.npz").unlink()
    html = page(write_report(run))
    assert html.count("<img ") == 2  # loss and schedule
    # no per-layer sections: the one collapsed section left is the configuration's
    assert "no activation statistics" in html and html.count("<details") == 1
    assert "<details><summary>" in html.split("<h2>Configuration</h2>")[1][:40]


def test_lr_find_and_bs_sweep_files_are_embedded(run_copy, trained):
    run = run_copy(LAYERS)
    png = base64.b64decode(DATA_URI.findall(page(trained.run_dir / "report.html"))[0])
    (run / "lr_find.png").write_bytes(png)
    (run / "bs_sweep.png").write_bytes(png)
    (run / "lr_find.json").write_text(json.dumps({"recommended_lr_max": 0.0123, "reasoning": "edge / 10",
                                                  "sweeps": [{"lrs": [1e-3] * 20}]}))
    html = page(write_report(run))
    assert "Learning-rate finder" in html and "Batch-size sweep" in html
    assert "0.0123" in html and "edge / 10" in html and '"sweeps"' not in html
    assert html.count("<img ") == 4 + len(LAYERS) + 2


def test_report_replaces_the_old_one_atomically(run_copy):
    run = run_copy(LAYERS)
    (run / "report.html").write_text("old")
    path = write_report(run)
    assert path == run / "report.html" and page(path).startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp file left


@pytest.mark.parametrize("what", ["missing", "empty", "file"])
def test_not_a_run_folder_is_a_run_error(tmp_path, what):
    target = tmp_path / "x"
    if what == "empty":
        target.mkdir()
    elif what == "file":
        target.write_text("hi")
    with pytest.raises(RunError):
        write_report(target)


def test_cli_report_writes_the_page_or_says_what_is_wrong(run_copy, tmp_path):
    runner = CliRunner()
    run = run_copy(LAYERS)
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "report.html").exists() and "report written to" in result.stdout
    result = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nope").exists()


def test_the_report_says_which_layers_froze_and_from_which_step(data_dir, tmp_path):
    """A real run with conv1 frozen after half its 8 steps: freezing starts at step 4, which is also the
    first recorded step (one in 4) without conv1's gradient; conv2 trains throughout."""
    from convscope import TrainConfig
    from convscope.experiments import run_training
    from convscope.report.html import frozen_from

    cfg = TrainConfig(data_root=str(data_dir), out=str(tmp_path), name="frozen", bs=256, limit_train=2048,
                      freeze={"conv1": 0.5}, device="cpu")
    result = run_training(cfg)
    stats = result.learn.activation_stats.data
    assert list(stats.steps) == [0, 4]
    assert frozen_from(stats) == {"conv1.conv": 4, "conv1.bn": 4}
    assert "Frozen part-way (no gradient, no update; their lines stop there): conv1.conv, conv1.bn from step 4." \
        in page(result.run_dir / "report.html")


def test_a_layer_summary_says_what_fastais_near_zero_is_made_of_before_an_activation(trained):
    """conv2.bn's closed section: fastai's near zero, then the shares below zero and actually near zero (read
    here from stats.npz with numpy); a ReLU's section gives fastai's share alone."""
    import numpy as np

    with np.load(trained.run_dir / "stats.npz") as npz:
        layers = [str(n) for n in npz["layers"]]
        near, negative, actual = npz["near_zero"][-1], npz["negative"][-1], npz["abs_near_zero"][-1]
    text = without_images(page(trained.run_dir / "report.html"))
    i = layers.index("conv2.bn")
    assert (f"near zero {100 * near[i]:.0f}% (fastai&#x27;s &lt;= 0.05: below zero {100 * negative[i]:.0f}%, "
            f"|x| &lt;= 0.05 {100 * actual[i]:.0f}%)") in text
    j = layers.index("conv2.act")
    assert re.search(rf"conv2\.act<span class=\"muted\"> last step: [^<]*near zero {100 * near[j]:.0f}%, dead", text)
