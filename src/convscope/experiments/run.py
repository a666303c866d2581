"""One training run from a TrainConfig: data, model, learner, run directory. What `convscope train` does."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convscope.config import TrainConfig, is_whole_number
from convscope.diagnose import diagnose, save_findings
from convscope.dist.batchnorm import sync_batchnorm
from convscope.dist.context import init_from_env, launch_env, on_main
from convscope.dist.devices import resolve_device
from convscope.errors import ConfigError, RunError
from convscope.experiments.live_findings import LiveFindings
from convscope.experiments.setup import build_batches, build_model, default_run_name, versions
from convscope.experiments.tensorboard import TensorBoard
from convscope.report.html import write_report
from convscope.runs import load_run
from convscope.runs.checkpoint import load_checkpoint, resume_learner
from convscope.runs.findings import Finding
from convscope.runs.store import create_run_dir, read_json, remove_stale_temporaries
from convscope.stats.activations import ActivationStats
from convscope.tensorboard.events import check_log_dir, require_tensorboard
from convscope.train.callback import Callback
from convscope.train.ddp import DistributedTrainer
from convscope.train.freeze import FreezeLayers, check_freeze
from convscope.train.guard import NonFiniteError, NonFiniteGuard
from convscope.train.interrupts import GracefulStop, SignalStop, catch_signals, stop_on_signals
from convscope.train.learner import Learner
from convscope.train.progress import ProgressBar
from convscope.train.recorder import check_resumable_rows
from convscope.train.run_saver import RunSaver, check_flush_seconds


@dataclass
class TrainResult:
    learn: Learner
    run_dir: Path
    config: TrainConfig
    findings: list = field(default_factory=list)
    interrupted: int | None = None  # the signal number when SIGINT/SIGTERM stopped the run
    report_stopped: bool = False  # the signal came after training, while the diagnosis and report were written
    stopped_by: Finding | None = None  # the Finding that stopped training early (TrainConfig.stop_on), else None

    @property
    def metrics(self) -> list[dict]:
        return self.learn.recorder.epochs


def resume_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run was started with (from its config.json), to resume it."""
    load_checkpoint(run_dir)  # says clearly when the folder is missing or holds nothing to resume
    saved = read_json(Path(run_dir) / "config.json")
    if not isinstance(saved, dict):
        raise RunError(f"{run_dir}/config.json is not a JSON object of settings; the run folder is damaged")
    names = {f.name for f in fields(TrainConfig)}
    try:
        return TrainConfig(**{k: v for k, v in saved.items() if k in names})
    except TypeError as exc:
        raise RunError(f"{run_dir}/config.json does not describe a convscope train run ({exc})") from None
    except ConfigError as exc:  # the value came from the file, not from the command line: say so
        raise RunError(f"{run_dir}/config.json: {exc}; the run folder is damaged") from None


def saved_checkpoint_every(run_dir: str | Path) -> int | None:
    """The --checkpoint-every a run was started with (config.json), so that a resume keeps checkpointing."""
    saved = read_json(Path(run_dir) / "config.json")
    every = saved.get("checkpoint_every") if isinstance(saved, dict) else None
    if every is not None and not (is_whole_number(every) and every >= 1):
        raise RunError(f"{run_dir}/config.json: checkpoint_every must be a whole number >= 1, got {every!r}; "
                       "the run folder is damaged")
    return every


def check_run_files(run_dir: Path) -> None:
    """Read back every file a resume continues (steps, metrics, statistics) before anything is written:
    a damaged one must stop the resume with its name, not be overwritten by the resumed run's shorter copy."""
    run = load_run(run_dir)
    check_resumable_rows(run_dir, run.steps, run.metrics)
    if run.has_stats:
        _ = run.activation_stats  # loading checks every array's kind and shape


def run_training(cfg: TrainConfig, progress: bool = False, cbs: Sequence[Callback] = (), stats: bool = True,
          resume: str | Path | None = None, checkpoint_every: int | None = None,
          flush_seconds: float | None = None) -> TrainResult:
    """Train the model `cfg` names (simple_cnn by default) as it says and write the run directory under `cfg.out`.

    stats: record ActivationStats (stats.npz; unless `cbs` already holds one), diagnose the run
    (findings.json) and write report.html into the run folder after fit.
    resume: a run folder to continue from its last checkpoint (use `resume_config` for its settings).
    flush_seconds: also write the run's files (not a checkpoint) every that many seconds of training, so
    that `convscope view` shows the run while it trains (`convscope train` uses 5); None: at epoch ends only.
    SIGINT/SIGTERM stop training at the next batch boundary with everything flushed and a checkpoint
    written; `TrainResult.interrupted` then holds the signal number.

    Everything that can be wrong with the input is checked before the run folder is made, so a failed
    start leaves nothing behind.
    """
    check_flush_seconds(flush_seconds)
    if cfg.freeze and launch_env().distributed:  # before any process group: refuse, never rendezvous
        raise ConfigError("freeze does not work with several processes yet (DDP expects every parameter's "
                          "gradient at each step); train on one process or drop the freeze setting")
    if cfg.tensorboard is not None:  # a missing package or a log folder that is a file: before any work
        require_tensorboard()
        check_log_dir(cfg.tensorboard)
    dist_info, device = init_from_env(resolve_device(cfg.device))
    if resume is not None:
        cfg = per_rank_batch(cfg, resume, dist_info.world_size)
    torch.manual_seed(cfg.seed)  # the same on every rank: identical initial weights
    train_dl, valid_dl, info = build_batches(cfg, device, dist_info.rank, dist_info.world_size)
    model = build_model(cfg, info, device, valid_dl)  # refuses a model too big for the device before the run folder
    check_freeze(model, cfg.freeze)  # a wrong layer name fails here, before the run folder exists
    if cfg.sync_bn and dist_info.distributed:
        model = sync_batchnorm(model, device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if resume is None:
        run_dir = Path(on_main(lambda: create_run_dir(cfg.out, cfg.name or default_run_name(cfg))))
    else:
        run_dir = Path(resume)
        load_checkpoint(run_dir)  # fail now, with a clear message, if there is nothing to resume
        check_run_files(run_dir)
        if checkpoint_every is None:
            checkpoint_every = saved_checkpoint_every(run_dir)
    info["world_size"], info["global_bs"] = dist_info.world_size, cfg.bs * dist_info.world_size
    config = {**cfg.to_dict(), "data": info, "versions": versions(device)}
    if checkpoint_every is not None:
        config["checkpoint_every"] = checkpoint_every
    stopper = GracefulStop()
    callbacks: list[Callback] = [RunSaver(run_dir, config, checkpoint_every=checkpoint_every,
                                                          flush_seconds=flush_seconds), NonFiniteGuard(),
                                 stopper, *cbs]
    if cfg.freeze:
        callbacks.append(FreezeLayers(cfg.freeze))
    if dist_info.distributed:
        callbacks.append(DistributedTrainer(device))
    if stats and not any(isinstance(cb, ActivationStats) for cb in cbs):
        callbacks.append(ActivationStats(every=cfg.stats_every))
    bar = ProgressBar() if progress and dist_info.is_main else None
    if bar is not None:
        callbacks.append(bar)
    live = next((cb for cb in cbs if isinstance(cb, LiveFindings)), None)
    if live is not None:  # the caller's: it diagnoses this run, so it reads this run's settings and folder
        live.config, live.run_dir = config, run_dir
    elif stats or cfg.stop_on is not None:
        # The rules run as it trains: findings at the step they become true, and --stop-on.
        live = LiveFindings(config, run_dir, stop_on=cfg.stop_on, say=None if bar is None else bar.say)
        callbacks.append(live)
    # One log folder per run under cfg.tensorboard, so `tensorboard --logdir` lists runs side by side; the
    # findings are those of the saved run, written after _finish_run below.
    board = TensorBoard(Path(cfg.tensorboard) / run_dir.name, findings=False) if cfg.tensorboard else None
    if board is not None:
        callbacks.append(board)
    loss_func = F.cross_entropy
    if cfg.label_smoothing:
        loss_func = partial(F.cross_entropy, label_smoothing=cfg.label_smoothing)
    learn = Learner(model, train_dl, valid_dl, loss_func=loss_func, opt_func=cfg.opt, lr=cfg.lr, wd=cfg.wd,
                    cbs=callbacks, device=device, precision=cfg.precision)
    if resume is not None:  # the fit below then continues where the checkpoint stands
        resume_learner(learn, run_dir, n_iter=len(train_dl), total_steps=max(1, round(cfg.epochs * len(train_dl))))
        if dist_info.is_main:
            remove_stale_temporaries(run_dir)  # a killed run's half-written files: every check has passed
    if cfg.compile:
        learn.train_model = _compiled(model, device)
    result = TrainResult(learn, run_dir, cfg)
    try:
        with catch_signals(stopper):
            if cfg.schedule == "one-cycle":
                learn.fit_one_cycle(cfg.epochs, cfg.lr, pct_start=cfg.pct_start, div=cfg.div, div_final=cfg.div_final,
                                    moms=cfg.moms)
            else:
                learn.fit(cfg.epochs, cfg.lr)
    except BaseException:
        if resume is None and dist_info.is_main:  # a start that failed before writing anything leaves no folder
            _remove_if_empty(run_dir)
        raise
    finally:
        result.interrupted = stopper.signum
        result.stopped_by = None if live is None else live.stopped_by
        # After a refused write (disk full, read-only) the diagnosis and report would only fail the same way.
        # Under torchrun a stop by signal is followed by SIGKILL after 30 s: no time for the report, which
        # `convscope report RUN` writes later from the saved files.
        late = dist_info.distributed and stopper.signum is not None
        if stats and learn.recorder.steps["loss"] and not isinstance(learn.exception, OSError) and dist_info.is_main \
                and not late:
            try:
                with stop_on_signals():  # a signal now stops the report at once: the old one stays whole
                    result.findings = _finish_run(run_dir, learn.exception, live)
                    if board is not None:
                        board.add_findings(result.findings)
            except SignalStop as stop:
                result.report_stopped = stopper.signum is None  # else the stop in training is the news
                result.interrupted = stopper.signum or stop.signum
    return result


def per_rank_batch(cfg: TrainConfig, run_dir: str | Path, world_size: int) -> TrainConfig:
    """The per-process batch size that keeps a resumed run's global batch, whatever its process count.

    The global batch fixes the data order, the steps per epoch and the schedule, so keeping it makes a
    run resumed on a different number of processes continue exactly where it stopped.
    """
    saved = read_json(Path(run_dir) / "config.json")
    data = saved.get("data") if isinstance(saved, dict) else None
    global_bs = data.get("global_bs", cfg.bs) if isinstance(data, dict) else cfg.bs
    if not is_whole_number(global_bs):
        raise RunError(f"{run_dir}/config.json has no usable global batch size ({global_bs!r}); "
                       "the run folder is damaged")
    if global_bs % world_size:
        raise ConfigError(f"the run was trained with a global batch of {global_bs}, which {world_size} processes "
                          f"cannot split evenly; resume with a process count that divides {global_bs}")
    return replace(cfg, bs=global_bs // world_size)


def _compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile(model), or the model itself (with a warning) where compiling is not possible here."""
    try:
        # torch.compile only wraps: it compiles at the first call, and without a C++ compiler (CPU) that call
        # raises InductorError mid-fit. So compile one small function now, before the fit starts.
        torch.compile(lambda x: torch.relu(x * 2 + 1))(torch.ones(2, device=device))
        return torch.compile(model)
    except Exception as exc:  # no compiler, an unsupported platform...: train eagerly rather than fail
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # dynamo adds lines of advice
        warnings.warn(f"torch.compile is not available here ({detail}); training without it", stacklevel=2)
        return model


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # refuses a folder that holds anything, so no file is ever lost here
    except OSError:
        pass


def _finish_run(run_dir: Path, exception: BaseException | None, live: LiveFindings | None = None) -> list:
    """Diagnose the run and write findings.json and report.html (also after a failed fit). The findings keep
    the step each was first seen at while training; the one that stopped the run (stop_on) leads."""
    findings = diagnose(load_run(run_dir))
    if live is not None:
        findings = live.found_at(findings)
        if live.stopped_by is not None:
            findings = [live.stopped_by, *(f for f in findings if f.rule not in ("healthy", live.stopped_by.rule))]
    if isinstance(exception, NonFiniteError):  # the guard's finding leads: it says why training stopped
        findings = [exception.finding, *(f for f in findings if f.rule != "healthy")]
    save_findings(run_dir, findings)
    write_report(run_dir)
    return findings
