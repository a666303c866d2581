"""The `convscope` command line. Each command is a plain typed function; its docstring is the help.

Errors caused by input (ConvscopeError) print one line on stderr and exit with code 2, with no
traceback; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .cli_options import DataRoot, Dataset, Device, LimitTrain
from .errors import ConvscopeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train convolutional networks and see inside them while they train.")
err = Console(stderr=True, highlight=False)
console = Console(highlight=False)


def rank_prefix() -> str:
    """'rank N: ' in the processes of a multi-process job other than rank 0, else ''."""
    from .dist.context import launch_env

    info = launch_env()
    return "" if info.is_main else f"rank {info.rank}: "


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a ConvscopeError, or a write refused by the disk (full, read-only, no permission), into one
    line on stderr and exit code 2. Files already written stay whole: every write is atomic."""
    import errno

    from rich.markup import escape  # a path or value like "[x]" must print as it is, not as a style

    # A full or read-only disk is the user's to fix, not a bug: no traceback, one line with the path.
    hints = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space (disk quota exceeded)",
             errno.EROFS: "make it writable", errno.EACCES: "make it writable", errno.EPERM: "make it writable",
             errno.ENOTDIR: "a part of that path is a file, not a folder"}

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConvscopeError as exc:
            err.print(f"{rank_prefix()}[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            if exc.errno not in hints:
                raise
            path = exc.filename2 or exc.filename or "a run file"  # a rename's destination is the file meant
            if kwargs.get("resume"):
                where = "copy the run folder somewhere writable and resume that copy"
            else:
                where = "choose another --out" if "out" in kwargs else "write somewhere else"
            line = f"cannot write {path}: {exc.strerror}; {hints[exc.errno]} or {where}"
            err.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    from .errors import ConfigError

    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated whole numbers, got {text!r}") from None


def parse_freeze(text: str) -> dict[str, float]:
    """'conv1=0.5,conv2=0.8' -> {'conv1': 0.5, 'conv2': 0.8}; 'none' -> {}."""
    from .errors import ConfigError

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


@app.command()
@user_errors
def train(
    dataset: Dataset = "mnist",
    data_root: DataRoot = None,
    recipe: Annotated[str, typer.Option(help="settings to start from: book (the fastai book's) or fast "
                                             "(quickest to 99% on MNIST); options given here override them")] = "book",
    epochs: Annotated[float | None, typer.Option(help="passes over the training set (fractions allowed) "
                                                      "[default: the recipe's, book: 1]")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate (the peak lr for one-cycle) "
                                                  "[default: the recipe's, book: 0.06]")] = None,
    bs: Annotated[int | None, typer.Option(help="batch size, per process [default: the recipe's, book: 512]")] = None,
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
    limit_train: LimitTrain = None,
    nproc: Annotated[int | None, typer.Option(help="train on N processes (starts torchrun; gloo on the CPU, "
                                                   "NCCL on GPUs); the global batch is bs x N")] = None,
    sync_bn: Annotated[bool, typer.Option("--sync-bn/--no-sync-bn", help="with several processes: BatchNorm "
                                          "statistics over the global batch")] = False,
) -> None:
    """Train the book's simple CNN and write a run folder (config, metrics, steps, stats, checkpoint,
    findings, report). Ctrl-C stops at the next batch with everything saved; --resume continues."""
    from .config import TrainConfig
    from .dist.context import current, shutdown
    from .errors import ConfigError
    from .experiment import resume_config
    from .experiment import train as run_training
    from .recipes import recipe_settings
    from .train.guard import NonFiniteError

    if nproc is not None:
        from .dist.launch import launch

        raise typer.Exit(launch(nproc, sys.argv[1:]))
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    if resume is not None:
        cfg = resume_config(resume)
        if data_root is not None:
            cfg.data_root = data_root
    else:
        given = {"epochs": epochs, "lr": lr, "bs": bs, "crop": crop, "shift": shift,
                 "channels": None if channels is None else parse_ints(channels, "--channels"),
                 "freeze": None if freeze is None else parse_freeze(freeze)}
        settings = {**recipe_settings(recipe), **{k: v for k, v in given.items() if v is not None}}
        if isinstance(settings.get("epochs"), float) and settings["epochs"].is_integer():
            settings["epochs"] = int(settings["epochs"])
        cfg = TrainConfig(dataset=dataset, data_root=data_root, bn=bn, schedule=schedule, seed=seed, device=device,
                          out=out, name=name, limit_train=limit_train, sync_bn=sync_bn, recipe=recipe, **settings)
    try:
        result = run_training(cfg, progress=sys.stderr.isatty(), resume=resume, checkpoint_every=checkpoint_every)
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
        from .cli_diagnose import findings_table

        console.print(findings_table(result.findings))
    if result.interrupted is not None:
        learn = result.learn
        report = f"; write its report with: convscope report {result.run_dir}" if rank.distributed else ""
        err.print(f"stopped by signal {result.interrupted} at step {learn.train_iter} (epoch {learn.epoch + 1}); "
                  f"everything is saved. Resume with: convscope train --resume {result.run_dir}{report}",
                  soft_wrap=True)
        raise typer.Exit(128 + result.interrupted)
    console.print(f"run written to {result.run_dir}")


@app.command()
@user_errors
def summary(
    channels: Annotated[str, typer.Option(help="filters of the stride-2 convs, comma-separated")] = "8,16,32,64",
    first_kernel: Annotated[int, typer.Option(help="kernel size of the first conv")] = 5,
    bn: Annotated[bool, typer.Option("--bn/--no-bn")] = True,
    input_size: Annotated[int, typer.Option(help="height and width of the input images")] = 28,
    in_channels: Annotated[int, typer.Option(help="1 for grayscale, 3 for RGB")] = 1,
    head: Annotated[str, typer.Option(help="conv (the book's last conv) or linear (flatten + Linear)")] = "conv",
) -> None:
    """Per layer: output shape, parameters, multiply-accumulates and receptive field."""
    from .models.cnn import simple_cnn
    from .models.summary import summary as model_summary

    model = simple_cnn(channels=parse_ints(channels, "--channels"), in_channels=in_channels,
                       first_kernel=first_kernel, bn=bn, head=head, image_size=input_size)
    console.print(str(model_summary(model, (in_channels, input_size, input_size))))


from .cli_bs_sweep import bs_sweep_command  # noqa: E402
from .cli_lr_find import lr_find_command  # noqa: E402

app.command("bs-sweep")(user_errors(bs_sweep_command))
app.command("lr-find")(user_errors(lr_find_command))

from .cli_diagnose import diagnose_command  # noqa: E402

app.command("diagnose")(user_errors(diagnose_command))

from .cli_report import report_command  # noqa: E402

app.command("report")(user_errors(report_command))

from .cli_lr_study import lr_study_command  # noqa: E402

app.command("lr-study")(user_errors(lr_study_command))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
