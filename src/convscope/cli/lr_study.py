"""`convscope lr-study`: four lr schedules from the same start, side by side."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from convscope.cli.app import console
from convscope.cli.options import DataRoot, Dataset, Device, LimitTrain

# What the table's activation columns count (experiments/lr_study.py computes them, diagnose/rules.py's
# collapse_episodes finds the collapses), said under the table: "collapses" alone reads as anything.
COLUMNS_EXPLAINED = (
    "early / peak near-zero: the share of activations <= 0.05 over the first quarter of training, mean and highest "
    "step, averaged over the layers other than BatchNorm. collapses: how many times a layer's near-zero share "
    "jumped above 90% from below 60% (a collapse episode), the most in any one layer; a layer that never dropped "
    "below 60% counts none, even collapsed from the start: read peak near-zero with it.")


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
    from convscope.config import TrainConfig
    from convscope.experiments.lr_study import run_lr_study  # torch loads only when the command runs

    cfg = TrainConfig(dataset=dataset, data_root=data_root, epochs=epochs, lr=lr, bs=bs, bn=bn, seed=seed,
                      device=device, out=out, name=name, limit_train=limit_train)
    run_dir, rows = run_lr_study(cfg)
    best = max(r.accuracy for r in rows)
    table = Table(title=f"lr study: {run_dir}")
    for col in ("schedule", "accuracy", "vs best", "final loss", "early near-zero", "peak near-zero", "collapses"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.schedule, f"{100 * r.accuracy:.2f}%", f"{100 * (r.accuracy - best):+.2f}",
                      f"{r.final_loss:.4f}",
                      f"{100 * r.early_near_zero:.0f}%", f"{100 * r.peak_near_zero:.0f}%", str(r.collapses))
    console.print(table)
    console.print(COLUMNS_EXPLAINED, soft_wrap=True)
    console.print(f"figure: {run_dir / 'lr_study.png'}")
    console.print(f"each schedule's run is a run folder in {run_dir}: convscope view {run_dir} (or compare, "
                  "report, diagnose) takes them all", soft_wrap=True)
