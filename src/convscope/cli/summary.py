"""`convscope summary`: the book's CNN, layer by layer (shape, parameters, compute, receptive field)."""

from __future__ import annotations

from typing import Annotated

import typer

from convscope.cli.app import console
from convscope.cli.options import parse_ints


def summary_command(
    channels: Annotated[str, typer.Option(help="filters of the stride-2 convs, comma-separated")] = "8,16,32,64",
    first_kernel: Annotated[int, typer.Option(help="kernel size of the first conv")] = 5,
    bn: Annotated[bool, typer.Option("--bn/--no-bn")] = True,
    input_size: Annotated[int, typer.Option(help="height and width of the input images")] = 28,
    in_channels: Annotated[int, typer.Option(help="1 for grayscale, 3 for RGB")] = 1,
    head: Annotated[str, typer.Option(help="conv (the book's last conv) or linear (flatten + Linear)")] = "conv",
) -> None:
    """Per layer: output shape, parameters, multiply-accumulates and receptive field."""
    from convscope.models.cnn import simple_cnn
    from convscope.models.summary import summary as model_summary

    model = simple_cnn(channels=parse_ints(channels, "--channels"), in_channels=in_channels,
                       first_kernel=first_kernel, bn=bn, head=head, image_size=input_size)
    # soft_wrap: the table's lines stay whole (rich would break them at 80 columns in a pipe or a file)
    console.print(str(model_summary(model, (in_channels, input_size, input_size))), soft_wrap=True)
