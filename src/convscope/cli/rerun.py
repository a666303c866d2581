"""`convscope rerun RUN [--apply-remedies]`: train a `convscope train` run again, with its findings' remedies."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from convscope.cli.app import console, err


def rerun_command(
    run: Annotated[str, typer.Argument(help="a run folder written by convscope train")],
    apply_remedies: Annotated[bool, typer.Option("--apply-remedies", help="change the settings its findings "
                                                 "ask for (findings.json, or a fresh diagnosis)")] = False,
    name: Annotated[str | None, typer.Option(help="the new run's folder name (default: RUN's name + "
                                             "-remedied or -rerun)")] = None,
    out: Annotated[str | None, typer.Option(help="folder to put the new run in (default: beside RUN)")] = None,
) -> None:
    """Train a run again from its own settings and seed; with --apply-remedies, as its diagnosis advises.
    Prints what changed, then both runs side by side."""
    from convscope.experiments.rerun import findings_of, remedied, saved_config
    from convscope.experiments.run import run_training
    from convscope.runs.run import load_run

    before_cfg = saved_config(run)
    old = load_run(run)
    findings = findings_of(run) if apply_remedies else []
    cfg, applied, skipped = remedied(before_cfg, findings)
    cfg.out = out if out is not None else str(Path(run).resolve().parent)
    cfg.name = name or f"{Path(run).resolve().name}-{'remedied' if apply_remedies else 'rerun'}"
    if apply_remedies:
        changes = Table(title=f"remedies from the findings of {run}")
        for col in ("setting", "before", "after", "finding"):
            changes.add_column(col)
        for a in applied:
            changes.add_row(a.setting, repr(a.before), repr(a.after), a.rule)
        for s in skipped:
            changes.add_row(s.setting, "", f"not applied: {s.why}", s.rule)
        console.print(changes)
        if not applied:
            err.print(f"nothing to change: the findings of {run} ask for no setting that can be applied; "
                      "rerun without --apply-remedies to repeat it as it was", soft_wrap=True)
            raise typer.Exit(2)
    result = run_training(cfg, progress=sys.stderr.isatty())
    new = load_run(result.run_dir)
    table = Table(title="side by side")
    for col in ("run", "accuracy", "final train_loss", "findings (high/medium)"):
        table.add_column(col)
    for label, r, fs in ((str(old.path), old, findings_of(old.path)), (str(new.path), new, result.findings)):
        acc = r.final_accuracy
        loss = r.metrics[-1].get("train_loss") if r.metrics else None
        serious = [f.rule for f in fs if f.severity in ("high", "medium")]
        table.add_row(label, "" if acc is None else f"{acc:.4f}", "" if loss is None else f"{loss:.4f}",
                      ", ".join(serious) or "none")
    console.print(table)
    console.print(f"run written to {result.run_dir}")
