"""Command-line options shared by several `convscope` commands, declared once, and their parsing."""

from __future__ import annotations

from typing import Annotated

import typer

from convscope.errors import ConfigError

Dataset = Annotated[str, typer.Option(help="mnist, fashion-mnist, or a folder of IDX files or class folders")]
DataRoot = Annotated[
    str | None, typer.Option(help="folder holding the dataset files (else $CONVSCOPE_DATA, cache, download)")
]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps")]
Model = Annotated[str | None, typer.Option(
    help="your own model: MODULE:FACTORY, a function taking in_channels and n_classes that returns an nn.Module "
         "(the current folder is importable, so mymodels:resnet finds mymodels.py) [default: the book's simple CNN]")]
LimitTrain = Annotated[int | None, typer.Option(help="use only the first N training images (quick runs)")]


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated whole numbers, got {text!r}") from None
