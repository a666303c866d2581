"""What a download shows on stderr: a rich progress bar when stderr is a terminal, else one line per file
once it is in place (a CI log then says what was fetched, without a bar's control codes)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn


class DownloadDisplay:
    """Progress of a few file downloads. Use as a context manager; `show=False` shows nothing."""

    def __init__(self, show: bool = True, console: Console | None = None) -> None:
        self.show = show
        self.console = console or Console(stderr=True, highlight=False)
        self.bar: Progress | None = None
        if show and self.console.is_terminal:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TextColumn("{task.fields[note]}"), console=self.console)

    def __enter__(self) -> DownloadDisplay:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def add(self, label: str, size: int) -> TaskID | None:
        """A bar for one file of `size` bytes, named `label`."""
        return None if self.bar is None else self.bar.add_task(label, total=size, note="")

    def attempt(self, task: TaskID | None, note: str) -> None:
        """A new try (another mirror, or a retry) starts from zero; `note` says which."""
        if self.bar is not None and task is not None:
            self.bar.reset(task, note=note)

    def advance(self, task: TaskID | None, n: int) -> None:
        if self.bar is not None and task is not None:
            self.bar.advance(task, n)

    def done(self, task: TaskID | None, label: str, size: int, url: str) -> None:
        if self.bar is not None and task is not None:
            self.bar.update(task, note="verified")
        elif self.show:
            self.console.print(f"downloaded {label} ({size / 1e6:.1f} MB) from {url}, checksums verified",
                               soft_wrap=True, markup=False)

    def failed(self, task: TaskID | None) -> None:
        if self.bar is not None and task is not None:
            self.bar.update(task, note="failed")
