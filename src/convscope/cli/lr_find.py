"""`convscope lr-find`: prints what experiments/lr_find.py found (the sweep itself: train/lr_finder.py).

Imports of torch wait until the command runs, so `convscope --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from convscope.cli.app import console
from convscope.cli.options import DataRoot, Dataset, Device, Model

if TYPE_CHECKING:
    from convscope.train.lr_finder import LRFindResult


_WHAT = {  # short enough for an 80-column table
    "minimum": "lowest smoothed loss / 10",
    "steep": "smoothed loss falls fastest",
    "valley": "middle of its longest fall",
    "slide": "fastai's interval slide",
    "edge": "raw loss turns up (no lag)",
}


def _suggestions_table(result: LRFindResult, title: str) -> Table:
    """Each suggestion's median, min and max over the sweeps."""
    table = Table(title=title)
    for col, justify in (("suggestion", "left"), ("median", "right"), ("min", "right"), ("max", "right"),
                         ("what it marks", "left")):
        table.add_column(col, justify=justify)
    for name, s in result.suggestions.items():
        table.add_row(name, f"{s['median']:.3g}", f"{s['min']:.3g}", f"{s['max']:.3g}", _WHAT.get(name, ""))
    return table


def lr_find_command(
    dataset: Dataset = "mnist",
    data_root: DataRoot = None,
    bs: Annotated[int, typer.Option(help="batch size (the lr that works depends on it)")] = 512,
    model: Model = None,
    bn: Annotated[bool, typer.Option("--bn/--no-bn", help="BatchNorm after each conv")] = True,
    start_lr: Annotated[float, typer.Option(help="learning rate of the first step")] = 1e-7,
    end_lr: Annotated[float, typer.Option(help="learning rate of the last step")] = 10.0,
    num_it: Annotated[int, typer.Option(help="steps per sweep (>= 5); the lr grows by equal ratios")] = 100,
    repeats: Annotated[int, typer.Option(help="sweeps, each on its own batch order, from the same weights")] = 2,
    seed: Annotated[int, typer.Option(help="random seed (weights and data order)")] = 42,
    device: Device = "auto",
    out: Annotated[str, typer.Option(help="parent folder of run folders")] = "runs",
    name: Annotated[str | None, typer.Option(help="run folder name (default: time, dataset, lr-find)")] = None,
) -> None:
    """Find a learning rate: sweep it up exponentially on the book's simple CNN (or --model) and watch the loss.

    Prints fastai's suggestions and the edge where the loss turns up (median, min, max over the sweeps).

    Recommends lr_max for `convscope train` (fit_one_cycle), with the reasoning.

    Writes config.json, lr_find.json and lr_find.png to a run folder.
    """
    from convscope.config import TrainConfig
    from convscope.experiments.lr_find import find_lr  # torch loads only when the command runs

    cfg = TrainConfig(dataset=dataset, data_root=data_root, model=model, bs=bs, bn=bn, seed=seed, device=device,
                      out=out, name=name)
    run_dir, result = find_lr(cfg, start_lr, end_lr, num_it, repeats)
    n = len(result.sweeps)
    console.print(_suggestions_table(result, f"LR finder, {n} sweep{'s' if n > 1 else ''} of {num_it} steps, "
                                             f"lr {start_lr:g} to {end_lr:g}"))
    console.print(f"recommended lr_max for fit_one_cycle: [bold]{result.recommended_lr_max:.3g}[/]")
    console.print(result.reasoning)
    console.print(f"run written to {run_dir} (lr_find.json, lr_find.png)")
