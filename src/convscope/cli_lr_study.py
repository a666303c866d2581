"""`convscope lr-study`: four lr schedules from the same start, side by side."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .cli_options import DataRoot, Dataset, Device, LimitTrain
from .config import TrainConfig
from .dist.context import refuse_under_torchrun
from .lr_study import SCHEDULES, lr_study, save_study
from .runs.store import create_run_dir


def lr_study_command(
    dataset: Dataset = "mnist",
    data_root: DataRoot = None,
    epochs: Annotated[int, typer.Option(help="budget: epochs per schedule")] = 1,
    lr: Annotated[float, typer.Option(help="the high (peak) learning rate")] = 0.06,
    bs: Annotated[int, typer.Option(help="batch size")] = 512,
    bn: Annotated[bool, typer.Option("--bn/--no-bn", help="BatchNorm (off by default: it hides the effect)")] = False,
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    device: Device = "auto",
    out: Annotated[str, typer.Option(help="parent folder of run folders")] = "runs",
    name: Annotated[str | None, typer.Option(help="run folder name")] = None,
    limit_train: LimitTrain = None,
) -> None:
    """Train the same model from the same start under constant-high, constant-low, warm-up and 1cycle
    learning rates; compare accuracy, loss and early activation collapse (lr_study.json, lr_study.png)."""
    import time

    cfg = TrainConfig(dataset=dataset, data_root=data_root, epochs=epochs, lr=lr, bs=bs, bn=bn, seed=seed,
                      device=device, out=out, name=name, limit_train=limit_train)
    from .devices import resolve_device

    resolve_device(device)
    from .experiment import load_data

    load_data(cfg)  # fail on missing data before a folder exists
    refuse_under_torchrun("convscope lr-study")  # before the run folder is made
    run_dir = create_run_dir(out, name or time.strftime("%Y%m%d-%H%M%S") + "-lr-study")
    rows = lr_study(cfg, SCHEDULES)
    save_study(rows, cfg, run_dir)
    best = max(r.accuracy for r in rows)
    table = Table(title=f"lr study: {run_dir}")
    for col in ("schedule", "accuracy", "vs best", "final loss", "early near-zero", "peak near-zero", "collapses"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.schedule, f"{100 * r.accuracy:.2f}%", f"{100 * (r.accuracy - best):+.2f}",
                      f"{r.final_loss:.4f}",
                      f"{100 * r.early_near_zero:.0f}%", f"{100 * r.peak_near_zero:.0f}%", str(r.collapses))
    Console().print(table)
    Console().print(f"figure: {run_dir / 'lr_study.png'}")
