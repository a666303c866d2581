"""`convscope diagnose RUN`: findings for a finished (or interrupted) run, as a table and findings.json."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from convscope.cli.app import console

if TYPE_CHECKING:
    from convscope.runs.findings import Finding

# One colour per runs.findings.SEVERITIES (not imported here: the command loads it only when it runs).
_SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "cyan", "info": "green"}


def findings_table(findings: list[Finding], title: str = "diagnosis") -> Table:
    table = Table(title=title, show_lines=True)
    for col in ("severity", "rule", "layer", "steps", "evidence", "remedy"):
        table.add_column(col, overflow="fold")
    for f in findings:
        steps = f"{f.steps[0]}-{f.steps[1]}" if f.steps else ""
        remedy = f.remedy
        if f.change:  # what `convscope rerun RUN --apply-remedies` would set
            remedy += "\n[dim]rerun: " + ", ".join(f"{k}={v}" for k, v in f.change.items()) + "[/]"
        table.add_row(f"[{_SEVERITY_STYLE[f.severity]}]{f.severity}[/]", f.rule, f.layer or "", steps,
                      f.evidence, remedy)
    return table


def diagnose_command(run: Annotated[str, typer.Argument(
        help="run folder, or an lr-study or bs-sweep folder (each of its runs)")]) -> None:
    """Read a run's statistics and print what is wrong, where, since when, and what to change (for each run of
    an lr-study or bs-sweep folder, each written to its own findings.json)."""
    from convscope.diagnose import diagnose  # numpy loads only when the command runs
    from convscope.runs.discover import find_runs
    from convscope.runs.findings import save_findings
    from convscope.runs.run import load_run

    loaded = [load_run(path) for path in find_runs(run)]  # every run read before any findings.json is written
    for one in loaded:
        findings = diagnose(one)
        path = save_findings(one.path, findings)
        console.print(findings_table(findings, title=f"diagnosis of {one.path}"))
        console.print(f"written to {path}")
