"""One list of severities (runs.findings.SEVERITIES): every place that shows a finding has a style for each
of them, so a severity added to the list without one fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console

from convscope.cli.diagnose import findings_table
from convscope.diagnose import SEVERITIES, Finding
from convscope.report import render_report
from convscope.runs.run import Run


def one_of_each() -> list[Finding]:
    return [Finding(f"rule_{s}", s, None, None, f"evidence {s}", f"remedy {s}") for s in SEVERITIES]


def test_the_cli_table_colours_every_severity():
    console = Console(record=True, width=200, color_system="truecolor")
    console.print(findings_table(one_of_each()))  # a severity without a colour: KeyError
    text = console.export_text()
    for s in SEVERITIES:
        assert f"rule_{s}" in text


def test_the_report_styles_every_severity_and_lists_them_worst_first(tmp_path: Path):
    findings = one_of_each()[::-1]  # best first on disk
    (tmp_path / "findings.json").write_text(json.dumps([f.to_dict() for f in findings]))
    html = render_report(Run(path=tmp_path, config={}, metrics=[], steps={}))
    style = html[html.index("<style>"): html.index("</style>")]
    for s in SEVERITIES:
        assert re.search(rf"\.sev-{s} {{ background: #[0-9a-f]{{6}}; }}", style), s
        assert f'<tr class="sev-{s}">' in html, s
    assert [html.index(f"rule_{s}<") for s in SEVERITIES] == sorted(html.index(f"rule_{s}<") for s in SEVERITIES)
