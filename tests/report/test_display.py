"""A run, its statistics and its findings display themselves in Jupyter (`_repr_html_`).

The HTML is parsed with the standard library's parser and checked against the run's files read with json and
numpy alone: each metrics.jsonl number, each finding's rule, each layer's last recorded row, and PNG figures
that decode (Pillow) to images of the size matplotlib was asked for.
"""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
from PIL import Image

from convscope import load_run
from convscope.diagnose import diagnose


class Page(HTMLParser):
    """Text of every table cell, and the decoded PNG of every <img>."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.images: list[Image.Image] = []
        self.scripts = 0
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            head, _, data = attrs["src"].partition(",")
            assert head == "data:image/png;base64"
            self.images.append(Image.open(io.BytesIO(base64.b64decode(data))))
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_a_run_shows_its_metrics_findings_and_figures(trained):
    run = load_run(trained.run_dir)
    page = Page(run._repr_html_())
    (row,) = [json.loads(line) for line in (trained.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert f"{row['accuracy']:.4g}" in page.cells and f"{row['valid_loss']:.4g}" in page.cells
    for finding in json.loads((trained.run_dir / "findings.json").read_text()):
        assert finding["rule"] in page.cells and finding["remedy"] in page.cells
    # the loss figure (13 x 4 in) and the all-layer figure (13 in wide) at 72 dpi
    assert [im.size[0] for im in page.images] == [13 * 72, 13 * 72] and page.images[0].size[1] == 4 * 72


def test_statistics_show_each_layers_last_row(stats, trained):
    with np.load(trained.run_dir / "stats.npz") as npz:
        layers, mean, near = [str(n) for n in npz["layers"]], npz["mean"], npz["near_zero"]
    page = Page(stats._repr_html_())
    for j, layer in enumerate(layers):
        k = page.cells.index(layer)
        assert page.cells[k + 2] == f"{mean[-1, j]:.4g}"
        assert page.cells[k + 4] == f"{100 * near[-1, j]:.0f}%"
    assert len(page.images) == 1


def test_findings_show_as_a_table_and_run_text_is_escaped(run_copy):
    run = load_run(run_copy(layers=["conv1.conv", "conv1.act"], rename={"conv1.act": "<script>x</script>"}))
    findings = diagnose(run)
    page = Page(findings._repr_html_())
    assert [c for c in page.cells[6::6]] == [f.severity for f in findings]
    stats_page = Page(run.activation_stats._repr_html_())
    assert stats_page.scripts == 0 and "<script>x</script>" in stats_page.cells
