"""A terminal progress bar (rich): epoch, batch, loss and samples per second while training."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from convscope.train.callback import Callback


class ProgressBar(Callback):
    """Shows training progress; reads the loss only every `refresh` batches (each read is a host sync)."""

    order = 95

    def __init__(self, refresh: int = 10, console: Console | None = None) -> None:
        self.refresh = refresh
        self.console = console or Console(stderr=True)

    def before_fit(self) -> None:
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} samples/s"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = None

    def before_train(self) -> None:
        learn = self.learn
        label = f"{learn.epoch + 1}/{learn.n_epochs}"
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("train", total=learn.n_iter, epoch=label, loss="-", speed="-")
        self.start, self.samples = time.perf_counter(), 0

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        self.samples += len(self.learn.yb)
        fields = {}
        if self.learn.iter % self.refresh == 0 and hasattr(self.learn, "loss"):
            fields["loss"] = f"{self.learn.loss.item():.4f}"
            fields["speed"] = f"{self.samples / max(1e-9, time.perf_counter() - self.start):,.0f}"
        self.progress.update(self.task, advance=1, **fields)

    def say(self, line: str) -> None:
        """Print a line while the bar is shown (rich keeps the bar below the lines printed): live findings."""
        progress = getattr(self, "progress", None)
        (progress.console if progress is not None else self.console).print(line, soft_wrap=True, highlight=False)

    def after_fit(self) -> None:
        self.progress.stop()
