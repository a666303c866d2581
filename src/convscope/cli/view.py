"""`convscope view [RUNS...]`: a local web page of runs, updating while they train (view/server.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from convscope.cli.app import console


def view_command(
    runs: Annotated[list[str] | None, typer.Argument(
        help="run folders, or folders of runs (runs/, an lr-study or bs-sweep folder); none: runs")] = None,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1; 0: a free one")] = 0,
) -> None:
    """Serve a page of the runs in these folders on 127.0.0.1: loss, accuracy, lr and every layer's statistics,
    overlaid and updating while they train, with their findings. Read-only; Ctrl-C stops it."""
    from convscope.view.server import make_server  # numpy loads only when the command runs

    server = make_server(runs or ["runs"], port)
    n = len(server.index.refresh())
    console.print(f"convscope view: {server.url}  ({n} run{'s' if n != 1 else ''} in {', '.join(runs or ['runs'])}; "
                  "Ctrl-C stops it)", soft_wrap=True)
    console.file.flush()  # a script reading the URL from a pipe sees it now
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()
