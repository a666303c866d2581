"""`convscope export-tensorboard RUN... DIR`: TensorBoard event files for saved run folders."""

from __future__ import annotations

from typing import Annotated

import typer

from convscope.cli.app import console


def export_tensorboard_command(
    paths: Annotated[list[str], typer.Argument(help="run folders, then the TensorBoard log folder (last)",
                                               metavar="RUN... DIR")],
) -> None:
    """Write TensorBoard event files for run folders into DIR/<run name> (then: tensorboard --logdir DIR)"""
    from convscope.errors import ConfigError
    from convscope.experiments.tensorboard import export_tensorboard  # torch loads only when the command runs

    if len(paths) < 2:
        raise ConfigError("export-tensorboard takes one or more run folders and then the log folder, e.g. "
                          "convscope export-tensorboard runs/a runs/b tb")
    *runs, log_dir = paths
    for folder in export_tensorboard(runs, log_dir):
        console.print(f"events written to {folder}")
    console.print(f"view them with: tensorboard --logdir {log_dir}")
