"""`convscope compare RUN_A RUN_B ... -o compare.html`: runs side by side in one offline page."""

from __future__ import annotations

from typing import Annotated

import typer

from convscope.cli.app import console


def compare_command(
    runs: Annotated[list[str], typer.Argument(help="run folders, or lr-study / bs-sweep folders (each of their runs)")],
    out: Annotated[str, typer.Option("-o", "--out", help="the page to write")] = "compare.html",
    overwrite: Annotated[bool, typer.Option(help="replace the page if it exists")] = False,
) -> None:
    """Write one self-contained page (opens offline) overlaying the runs' curves and statistics, with a table
    of their settings that differ and their findings side by side."""
    from convscope.view.compare import write_compare  # numpy loads only when the command runs

    path = write_compare(runs, out, overwrite=overwrite)
    console.print(f"comparison written to {path}")
