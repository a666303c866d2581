"""`convscope lr-find`: the command function (registered in cli.py); the sweep is schedules/lr_finder.py.

Everything that can be wrong with the input is checked, and the sweeps are run, before the run folder
is made: a failed start leaves nothing behind. Imports of torch wait until the command runs, so
`convscope --help` stays fast.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .cli_options import DataRoot, Dataset, Device

if TYPE_CHECKING:
    from .config import TrainConfig
    from .schedules.lr_finder import LRFindResult

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

WHAT = {  # short enough for an 80-column table
    "minimum": "lowest smoothed loss / 10",
    "steep": "smoothed loss falls fastest",
    "valley": "middle of its longest fall",
    "slide": "fastai's interval slide",
    "edge": "raw loss turns up (no lag)",
}


def suggestions_table(result: LRFindResult, title: str) -> Table:
    """Each suggestion's median, min and max over the sweeps."""
    table = Table(title=title)
    for col, justify in (("suggestion", "left"), ("median", "right"), ("min", "right"), ("max", "right"),
                         ("what it marks", "left")):
        table.add_column(col, justify=justify)
    for name, s in result.suggestions.items():
        table.add_row(name, f"{s['median']:.3g}", f"{s['min']:.3g}", f"{s['max']:.3g}", WHAT.get(name, ""))
    return table


def run_lr_find(cfg: TrainConfig, start_lr: float, end_lr: float, num_it: int, repeats: int
                ) -> tuple[LRFindResult, dict[str, Any]]:
    """Build the data, simple_cnn and a Learner as `convscope train` would, and sweep. Returns the result
    and the config to save."""
    import torch

    from .devices import resolve_device
    from .experiment import build_batches, fit_to_input, versions
    from .models.cnn import simple_cnn
    from .schedules.lr_finder import lr_find
    from .train.learner import Learner

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # the same initial weights as `convscope train --seed`
    train_dl, valid_dl, info = build_batches(cfg, device)
    model = simple_cnn(channels=cfg.channels, n_classes=len(info["classes"]), in_channels=info["in_channels"],
                       first_kernel=cfg.first_kernel, bn=cfg.bn)
    learn = Learner(fit_to_input(model, info), train_dl, valid_dl, wd=cfg.wd, device=device)
    result = lr_find(learn, start_lr=start_lr, end_lr=end_lr, num_it=num_it, repeats=repeats, seed=cfg.seed)
    config = {**cfg.to_dict(), "command": "lr-find", "lr_find": result.settings, "data": info,
              "versions": versions(device)}
    return result, config


def write_lr_find(run_dir: Path, result: LRFindResult, config: dict[str, Any]) -> None:
    """config.json, lr_find.json (every sweep, the suggestions, the recommendation) and lr_find.png."""
    from .runs.store import atomic_write_bytes, atomic_write_json

    atomic_write_json(run_dir / "config.json", config)
    atomic_write_json(run_dir / "lr_find.json", result.to_dict())
    buf = io.BytesIO()
    result.plot().savefig(buf, format="png", dpi=110)
    atomic_write_bytes(run_dir / "lr_find.png", buf.getvalue())


def lr_find_command(
    dataset: Dataset = "mnist",
    data_root: DataRoot = None,
    bs: Annotated[int, typer.Option(help="batch size (the lr that works depends on it)")] = 512,
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
    """Find a learning rate: sweep it up exponentially on the book's simple CNN and watch the loss.

    Prints fastai's suggestions and the edge where the loss turns up (median, min, max over the sweeps).

    Recommends lr_max for `convscope train` (fit_one_cycle), with the reasoning.

    Writes config.json, lr_find.json and lr_find.png to a run folder.
    """
    from .config import TrainConfig
    from .errors import RunError
    from .experiment import default_run_name
    from .runs.store import create_run_dir
    from .schedules.lr_finder import check_sweep_args

    check_sweep_args(start_lr, end_lr, num_it, repeats)
    cfg = TrainConfig(dataset=dataset, data_root=data_root, bs=bs, bn=bn, seed=seed, device=device, out=out,
                      name=name)
    run_name = cfg.name or default_run_name(cfg) + "-lr-find"
    if (Path(cfg.out) / run_name).exists():  # fail before the sweeps, not after them
        raise RunError(f"run folder {Path(cfg.out) / run_name} already exists; choose another --name or --out")
    result, config = run_lr_find(cfg, start_lr, end_lr, num_it, repeats)
    run_dir = create_run_dir(cfg.out, run_name)
    write_lr_find(run_dir, result, config)
    n = len(result.sweeps)
    console.print(suggestions_table(result, f"LR finder, {n} sweep{'s' if n > 1 else ''} of {num_it} steps, "
                                            f"lr {start_lr:g} to {end_lr:g}"))
    console.print(f"recommended lr_max for fit_one_cycle: [bold]{result.recommended_lr_max:.3g}[/]")
    console.print(result.reasoning)
    console.print(f"run written to {run_dir} (lr_find.json, lr_find.png)")
