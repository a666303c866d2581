"""`convscope bs-sweep`: the command function (registered in cli.py); the work is in bs_sweep.py.

Imports of torch and the sweep machinery wait until the command runs, so `convscope --help` stays fast.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from convscope.cli.app import console, err
from convscope.cli.options import DataRoot, Dataset, Device, Model


def _progress(row: dict[str, Any]) -> None:
    from convscope.experiments.bs_sweep import format_noise_scale as _count

    if row.get("diverged"):
        err.print(f"bs {row['bs']:>5}: diverged: {row['diverged']}")
        return
    err.print(f"bs {row['bs']:>5}: accuracy {row['accuracy']:.2%}, {row['steps']} steps, "
              f"{row['train_seconds']:.1f} s training, B_simple late {_count(row['b_simple_late'])}")


def _results_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The sweep's rows as a rich table."""
    from convscope.experiments.bs_sweep import format_noise_scale as _count

    table = Table(title=title)
    head = ("bs", "lr", "steps", "test acc", "train s", "cpu s", "samples/s", "peak MiB", "final loss",
            "steps to target", "B_simple early", "B_simple late")
    for col in head:
        table.add_column(col, justify="right")
    for r in rows:
        accuracy = "diverged" if r.get("diverged") else f"{r['accuracy']:.2%}"
        table.add_row(str(r["bs"]), f"{r['lr']:.4g}", str(r["steps"] or "-"), accuracy,
                      f"{r['train_seconds']:.1f}", f"{r['train_cpu_seconds']:.1f}",
                      f"{r['samples_per_s']:,.0f}", f"{r['peak_mem_mb']:,.0f}",
                      f"{r['final_train_loss']:.4f}", str(r.get("steps_to_target") or "-"),
                      _count(r["b_simple_early"]), _count(r["b_simple_late"]))
    return table


def bs_sweep_command(
    bs: Annotated[str, typer.Option(help="batch sizes, comma-separated")] = "64,128,256,512,1024,2048",
    epochs: Annotated[int, typer.Option(help="passes over the training set, for every setting")] = 1,
    lr: Annotated[float, typer.Option(help="peak learning rate (one-cycle) at --base-bs")] = 0.06,
    lr_scaling: Annotated[str, typer.Option(help="none, linear or sqrt: how lr follows bs / base-bs")] = "none",
    base_bs: Annotated[int, typer.Option(help="the batch size at which --lr applies")] = 512,
    dataset: Dataset = "mnist",
    data_root: DataRoot = None,
    model: Model = None,
    seed: Annotated[int, typer.Option(help="random seed: the same initial weights for every setting")] = 42,
    device: Device = "auto",
    out: Annotated[str, typer.Option(help="parent folder of the sweep folder")] = "runs",
    name: Annotated[str | None, typer.Option(help="sweep folder name (default: time + bs-sweep)")] = None,
    gns_every: Annotated[
        int | None, typer.Option(help="measure the gradient noise scale every N steps (default: ~60 per run)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads per setting (default: torch's choice; 1 on a busy machine)")
    ] = None,
    limit_train: Annotated[int | None, typer.Option(hidden=True, help="train on N samples per epoch")] = None,
) -> None:
    """Train the same model from the same weights at several batch sizes, each in a fresh process.

    Reports test accuracy, training time, samples/s, steps, peak memory, final train loss and the
    gradient noise scale per batch size; writes bs_sweep.json, bs_sweep.png and one run folder per
    setting into the sweep folder; and recommends a batch size.
    """
    from convscope.experiments.bs_sweep import (  # torch loads only when a command runs
        SweepConfig,
        parse_batch_sizes,
        run_sweep,
    )

    cfg = SweepConfig(batch_sizes=parse_batch_sizes(bs), epochs=epochs, lr=lr, lr_scaling=lr_scaling,
                      base_bs=base_bs, dataset=dataset, data_root=data_root, model=model, seed=seed, device=device,
                      out=out, name=name, limit_train=limit_train, gns_every=gns_every, threads=threads)
    result = run_sweep(cfg, on_setting=_progress)
    # 11 columns need more than the 80 characters rich assumes when stdout is a file or a pipe.
    out = console if console.is_terminal else Console(highlight=False, width=140)
    out.print(_results_table(result.rows, f"batch-size sweep {result.path}"))
    for line in result.recommendation:
        out.print(f"- {line}")
    console.print(f"sweep written to {result.path} (bs_sweep.json, bs_sweep.png)")
