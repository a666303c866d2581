"""`convscope report RUN`: (re)write a run's report.html; the page itself is report/html.py."""

from __future__ import annotations

from typing import Annotated

import typer

from convscope.cli.app import console


def report_command(
    run: Annotated[str, typer.Argument(help="run folder, as printed by `convscope train`")],
) -> None:
    """Write report.html for a run folder"""
    from convscope.report.html import write_report  # matplotlib loads only when the command runs

    path = write_report(run)
    console.print(f"report written to {path}")
