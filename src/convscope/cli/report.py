"""`convscope report RUN`: (re)write a run's report.html; the page itself is report/html.py.

Given a folder of runs (an lr-study or bs-sweep folder), it writes each run's report.html and, where plotly
is installed (`convscope[view]`), the study's runs side by side in the folder's compare.html."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from convscope.cli.app import console


def report_command(
    run: Annotated[str, typer.Argument(help="run folder, as printed by `convscope train`, or an lr-study or "
                                            "bs-sweep folder (a report for each of its runs, and compare.html)")],
) -> None:
    """Write report.html for a run folder (for each run of an lr-study or bs-sweep folder)"""
    from convscope.report.html import write_report  # matplotlib loads only when the command runs
    from convscope.runs.discover import find_runs

    runs = find_runs(run)
    for path in runs:
        console.print(f"report written to {write_report(path)}")
    if runs != [Path(run)]:
        from convscope.errors import ConfigError
        from convscope.view.compare import write_compare

        try:
            page = write_compare([run], Path(run) / "compare.html", overwrite=True)
        except ConfigError as exc:  # plotly missing, or a folder of one run: the reports above are the answer
            console.print(f"no comparison page: {exc}", soft_wrap=True)
        else:
            console.print(f"the runs side by side: {page}")
