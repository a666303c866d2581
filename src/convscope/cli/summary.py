"""`convscope summary`: a model, layer by layer (shape, parameters, compute, receptive field).

The book's CNN by default, or `--model MODULE:FACTORY`; built by experiments.setup.build_model, as
`convscope train` builds it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from convscope.cli.app import console
from convscope.cli.options import Model, parse_ints


def summary_command(
    model: Model = None,
    channels: Annotated[str, typer.Option(help="filters of the stride-2 convs, comma-separated")] = "8,16,32,64",
    first_kernel: Annotated[int, typer.Option(help="kernel size of the first conv")] = 5,
    bn: Annotated[bool, typer.Option("--bn/--no-bn")] = True,
    input_size: Annotated[int, typer.Option(help="height and width of the input images")] = 28,
    in_channels: Annotated[int, typer.Option(help="1 for grayscale, 3 for RGB")] = 1,
    n_classes: Annotated[int, typer.Option(help="outputs of the model (classes)")] = 10,
    head: Annotated[str, typer.Option(help="conv (the book's last conv) or linear (flatten + Linear)")] = "conv",
) -> None:
    """Per layer: output shape, parameters, multiply-accumulates and receptive field."""
    from convscope.config import TrainConfig, check_whole_number
    from convscope.experiments.setup import build_model
    from convscope.models.summary import summary as model_summary

    for name, value in (("--input-size", input_size), ("--in-channels", in_channels), ("--n-classes", n_classes)):
        check_whole_number(name, value)
    cfg = TrainConfig(model=model, channels=parse_ints(channels, "--channels"), first_kernel=first_kernel, bn=bn,
                      head=head)
    info = {"in_channels": in_channels, "image_size": [input_size, input_size], "classes": list(range(n_classes))}
    net = build_model(cfg, info)
    # soft_wrap: the table's lines stay whole (rich would break them at 80 columns in a pipe or a file)
    console.print(str(model_summary(net, (in_channels, input_size, input_size))), soft_wrap=True)
