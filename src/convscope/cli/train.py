"""`convscope train`: settings from the command line (or a run to resume) into experiments.run."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from convscope.cli.app import console, err
from convscope.cli.options import DataRoot, Dataset, Device, LimitTrain, Model, parse_ints
from convscope.errors import ConfigError, ConvscopeError


def _interval(text: str) -> int | str:
    """--stats-every: "auto" or a whole number (TrainConfig says what is wrong with anything else)."""
    return int(text) if text.strip().lstrip("-").isdigit() else text


def _parse_freeze(text: str) -> dict[str, float]:
    """'conv1=0.5,conv2=0.8' -> {'conv1': 0.5, 'conv2': 0.8}; 'none' -> {}."""
    if text.strip().lower() == "none":
        return {}
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            at = float(value)
        except ValueError:
            at = None
        if not sep or not name.strip() or at is None:
            raise ConfigError(f"--freeze takes LAYER=FRACTION pairs such as conv1=0.5, got {text!r}")
        out[name.strip()] = at
    return out


def train_command(
    dataset: Dataset = "mnist",
    data_root: DataRoot = None,
    recipe: Annotated[str, typer.Option(help="settings to start from: book (the fastai book's) or fast "
                                             "(quickest to 99% on MNIST); options given here override them")] = "book",
    epochs: Annotated[float | None, typer.Option(help="passes over the training set (fractions allowed) "
                                                      "[default: the recipe's, book: 1]")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate (the peak lr for one-cycle) "
                                                  "[default: the recipe's, book: 0.06]")] = None,
    bs: Annotated[int | None, typer.Option(help="batch size, per process [default: the recipe's, book: 512]")] = None,
    model: Model = None,
    bn: Annotated[bool, typer.Option("--bn/--no-bn", help="BatchNorm after each conv")] = True,
    schedule: Annotated[str, typer.Option(help="one-cycle or constant")] = "one-cycle",
    channels: Annotated[str | None, typer.Option(help="filters of the stride-2 convs, comma-separated "
                                                      "[default: the recipe's, book: 8,16,32,64]")] = None,
    crop: Annotated[int | None, typer.Option(help="train and validate on the centre CROP x CROP pixels "
                                                  "[default: the recipe's, book: none, fast: 20]")] = None,
    shift: Annotated[int | None, typer.Option(help="with --crop: train on crops moved up to SHIFT pixels at "
                                                   "random (validation uses the centre) [default: the recipe's, "
                                                   "fast: 1]")] = None,
    freeze: Annotated[str | None, typer.Option(help="stop training layers part-way, e.g. conv1=0.5 (after half "
                                                    "the steps); 'none' trains all [default: the recipe's]")] = None,
    seed: Annotated[int, typer.Option(help="random seed (weights and data order)")] = 42,
    device: Device = "auto",
    out: Annotated[str, typer.Option(help="parent folder of run folders")] = "runs",
    name: Annotated[str | None, typer.Option(help="run folder name (default: time and dataset)")] = None,
    resume: Annotated[str | None, typer.Option(help="continue this run folder from its last checkpoint "
                                                    "(its own settings are used; the others are ignored)")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="also checkpoint every N steps")] = None,
    flush_every: Annotated[float, typer.Option(help="write the run's files (not a checkpoint) every SECONDS while "
                                                    "training, for `convscope view`; 0: at epoch ends only")] = 5.0,
    limit_train: LimitTrain = None,
    nproc: Annotated[int | None, typer.Option(help="train on N processes (starts torchrun; gloo on the CPU, "
                                                   "NCCL on GPUs); the global batch is bs x N")] = None,
    sync_bn: Annotated[bool, typer.Option("--sync-bn/--no-sync-bn", help="with several processes: BatchNorm "
                                          "statistics over the global batch")] = False,
    precision: Annotated[str, typer.Option(help="32 (float32), bf16 or fp16: the forward pass and loss in that "
                                                "dtype under autocast (fp16 with loss scaling)")] = "32",
    compile_model: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile the model (trains "
                                                "eagerly, with a warning, where compiling is not possible)")] = False,
    stats_every: Annotated[str, typer.Option(help="record the statistics every N steps; auto: as often as keeps "
                                                  "them within 2% of the training time")] = "auto",
    tensorboard: Annotated[str | None, typer.Option(help="write TensorBoard event files while training, into "
                                                         "DIR/<run name> (needs convscope[tensorboard])",
                                                    metavar="DIR")] = None,
    stop_on: Annotated[str | None, typer.Option(help="stop training at the first finding at least this severe "
                                                     "(high, medium or low), with the checkpoint and findings "
                                                     "saved; the rules run as it trains")] = None,
) -> None:
    """Train the book's simple CNN (or --model) and write a run folder (config, metrics, steps, stats, checkpoint,
    findings, report). Ctrl-C stops at the next batch with everything saved; --resume continues."""
    # torch loads only when the command runs, so that `convscope --help` stays fast
    from convscope.config import TrainConfig, check_whole_number
    from convscope.dist.context import current, shutdown
    from convscope.experiments.recipes import recipe_settings
    from convscope.experiments.run import resume_config, run_training
    from convscope.train.guard import NonFiniteError

    if nproc is not None:
        from convscope.dist.launch import launch

        raise typer.Exit(launch(nproc, sys.argv[1:]))
    if checkpoint_every is not None:
        check_whole_number("--checkpoint-every", checkpoint_every)
    if resume is not None:
        cfg = resume_config(resume)
        if data_root is not None:
            cfg.data_root = data_root
    else:
        if model is not None and (channels is not None or not bn):
            shaping = "--channels" if channels is not None else "--no-bn"
            raise ConfigError(f"{shaping} shapes convscope's simple_cnn and does nothing with --model {model}: "
                              "set the layers in your factory instead")
        given = {"epochs": epochs, "lr": lr, "bs": bs, "crop": crop, "shift": shift,
                 "channels": None if channels is None else parse_ints(channels, "--channels"),
                 "freeze": None if freeze is None else _parse_freeze(freeze)}
        settings = {**recipe_settings(recipe), **{k: v for k, v in given.items() if v is not None}}
        if isinstance(settings.get("epochs"), float) and settings["epochs"].is_integer():
            settings["epochs"] = int(settings["epochs"])
        cfg = TrainConfig(dataset=dataset, data_root=data_root, bn=bn, schedule=schedule, seed=seed, device=device,
                          model=model, out=out, name=name, limit_train=limit_train, sync_bn=sync_bn, recipe=recipe,
                          precision=precision, compile=compile_model, stats_every=_interval(stats_every),
                          tensorboard=tensorboard, stop_on=stop_on, **settings)
    try:
        result = run_training(cfg, progress=sys.stderr.isatty(), resume=resume, checkpoint_every=checkpoint_every,
                              flush_seconds=flush_every or None)
        rank = current()
    except NonFiniteError as exc:
        err.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    except Exception as exc:
        if not current().distributed or isinstance(exc, ConvscopeError):
            raise
        # Another rank failed (its own error is printed by that rank) and this one lost its peers.
        where = cfg.out if resume is None else resume
        err.print(f"[bold red]error:[/] rank {current().rank}: the distributed job broke off "
                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); the last checkpoint under "
                  f"{where} is intact: resume with convscope train --resume RUN_FOLDER", soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        if current().distributed and sys.exc_info()[0] is None:
            shutdown()
    if not rank.is_main:
        if result.interrupted is not None:
            raise typer.Exit(128 + result.interrupted)
        return
    table = Table(title=f"run {result.run_dir}")
    for col in ("epoch", "train_loss", "valid_loss", "accuracy", "seconds"):
        table.add_column(col, justify="right")
    for row in result.metrics:
        table.add_row(str(row["epoch"] + 1), *(f"{row.get(k, float('nan')):.4f}" for k in
                                                ("train_loss", "valid_loss", "accuracy")),
                      f"{row['seconds']:.1f}")
    console.print(table)
    if rank.distributed:
        console.print(f"{rank.world_size} processes x batch {result.config.bs} = global batch "
                      f"{result.config.bs * rank.world_size}")
    if result.findings:
        from convscope.cli.diagnose import findings_table

        console.print(findings_table(result.findings))
    if result.report_stopped:
        err.print(f"stopped by signal {result.interrupted} while writing the diagnosis and report, after the last "
                  f"step ({result.learn.train_iter}); the training is finished and saved, report.html is left as it "
                  f"was. Write the report with: convscope report {result.run_dir}", soft_wrap=True)
        raise typer.Exit(128 + result.interrupted)
    if result.stopped_by is not None and result.interrupted is None:
        f = result.stopped_by
        where = f" in {f.layer}" if f.layer else ""
        err.print(f"stopped at step {result.learn.train_iter} of {result.learn.total_steps} (--stop-on {cfg.stop_on}): "
                  f"[{f.severity}] {f.rule}{where}, true since step {f.found_at}; checkpoint and findings.json saved "
                  f"in {result.run_dir}. Train again with its remedies: convscope rerun {result.run_dir} "
                  "--apply-remedies", soft_wrap=True)
        return
    if result.interrupted is not None:
        learn = result.learn
        report = f"; write its report with: convscope report {result.run_dir}" if rank.distributed else ""
        err.print(f"stopped by signal {result.interrupted} at step {learn.train_iter} (epoch {learn.epoch + 1}); "
                  f"everything is saved. Resume with: convscope train --resume {result.run_dir}{report}",
                  soft_wrap=True)
        raise typer.Exit(128 + result.interrupted)
    console.print(f"run written to {result.run_dir}")
