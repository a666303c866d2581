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

from PIL import Image

from convscope import load_run


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
