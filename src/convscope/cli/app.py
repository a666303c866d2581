"""The typer app and what every command shares: the consoles, and turning input errors into one line.

Errors caused by input (ConvscopeError) print one line on stderr and exit with code 2, with no
traceback; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import errno
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any

import typer
from rich.console import Console

from convscope.errors import ConvscopeError, ConvscopeWarning

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train convolutional networks and see inside them while they train.")
err = Console(stderr=True, highlight=False)
console = Console(highlight=False)


def _rank_prefix() -> str:
    """'rank N: ' in the processes of a multi-process job other than rank 0, else ''."""
    from convscope.dist.context import launch_env

    info = launch_env()
    return "" if info.is_main else f"rank {info.rank}: "


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a ConvscopeError, or a write refused by the disk (full, read-only, no permission), into one
    line on stderr and exit code 2. Files already written stay whole: every write is atomic."""
    from rich.markup import escape  # a path or value like "[x]" must print as it is, not as a style

    # A full or read-only disk is the user's to fix, not a bug: no traceback, one line with the path.
    hints = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (disk quota exceeded)",
             errno.EROFS: "make it writable", errno.EACCES: "make it writable", errno.EPERM: "make it writable",
             errno.ENOTDIR: "a part of that path is a file, not a folder"}

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warnings(warnings.showwarning)
                return fn(*args, **kwargs)
        except ConvscopeError as exc:
            err.print(f"{_rank_prefix()}[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            if exc.errno not in hints:
                raise
            path = exc.filename2 or exc.filename or "a run file"  # a rename's destination is the file meant
            if kwargs.get("resume"):
                where = "copy the run folder somewhere writable and resume that copy"
            else:
                where = "choose another --out" if "out" in kwargs else "write somewhere else"
            line = f"cannot write {path}: {exc.strerror}; {hints[exc.errno]} or {where}"
            err.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _one_line_warnings(show: Callable[..., None]) -> Callable[..., None]:
    """A warnings.showwarning that prints convscope's own warnings (input it carried on without) as one
    line, `warning: ...`, and leaves every other warning to `show`."""
    from rich.markup import escape

    def showwarning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, ConvscopeWarning):
            err.print(f"{_rank_prefix()}[bold yellow]warning:[/] {escape(str(message))}", soft_wrap=True)
        else:
            show(message, category, *args, **kwargs)

    return showwarning
