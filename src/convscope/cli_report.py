"""`convscope report RUN`: the command function (registered in cli.py); the page is report/html.py."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

console = Console(highlight=False)


def report_command(
    run: Annotated[str, typer.Argument(help="run folder, as printed by `convscope train`")],
) -> None:
    """Write report.html for a run folder"""
    from .report.html import write_report  # matplotlib loads only when the command runs

    path = write_report(run)
    console.print(f"report written to {path}")
