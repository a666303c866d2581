"""One training run from a TrainConfig: data, model, learner, run directory. What `convscope train` does."""

from __future__ import annotations

import platform
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .config import TrainConfig
from .data.batches import DeviceBatches, normalize_images
from .data.folders import load_image_folder
from .data.sources import DATASETS, ImageData, load_dataset
from .devices import resolve_device
from .dist.batchnorm import sync_batchnorm
from .dist.context import init_from_env, launch_env, on_main
from .dist.ddp import DistributedTrainer
from .errors import ConfigError, RunError
from .models.cnn import simple_cnn
from .report.html import write_report
from .runs.checkpoint import load_checkpoint
from .runs.saver import RunSaver
from .runs.store import create_run_dir, read_json
from .stats.activations import ActivationStats
from .train.callback import Callback
from .train.freeze import FreezeLayers, check_freeze
from .train.guard import NonFiniteGuard
from .train.interrupts import GracefulStop, catch_signals
from .train.learner import Learner
from .train.progress import ProgressBar


@dataclass
class TrainResult:
    learn: Learner
    run_dir: Path
    config: TrainConfig
    findings: list = field(default_factory=list)
    interrupted: int | None = None  # the signal number when SIGINT/SIGTERM stopped the run

    @property
    def metrics(self) -> list[dict]:
        return self.learn.recorder.epochs


def load_data(cfg: TrainConfig) -> ImageData:
    """A registered dataset or a folder of IDX files -> load_dataset; a folder of class folders -> images."""
    path = Path(cfg.dataset)
    if cfg.dataset.lower() not in DATASETS and path.is_dir() and not any(path.glob("*-ubyte*")):
        return load_image_folder(path)
    return load_dataset(cfg.dataset, root=cfg.data_root)


def build_batches(cfg: TrainConfig, device: torch.device, rank: int = 0, world_size: int = 1):
    """Load the dataset and return (train batches, valid batches, data info).

    Under torch.distributed every rank holds the whole (small) dataset on its device and takes its shard
    of each global batch (see DeviceBatches), so the data order does not depend on the world size.
    """
    data = load_data(cfg)
    if cfg.limit_train is not None:
        n = cfg.limit_train
        data.train_images, data.train_labels = data.train_images[:n], data.train_labels[:n]
    if cfg.crop is not None:  # training keeps a margin of `shift` pixels around the crop to move it in
        h, w = data.train_images.shape[-2:]
        if cfg.shift and cfg.crop + 2 * cfg.shift > min(h, w):
            raise ConfigError(f"crop {cfg.crop} + 2 x shift {cfg.shift} = {cfg.crop + 2 * cfg.shift} is larger than "
                              f"the {h}x{w} images; use a smaller --crop or --shift")
        data.train_images = centre_crop(data.train_images, cfg.crop + 2 * cfg.shift)
        data.test_images = centre_crop(data.test_images, cfg.crop)
    n_train = len(data.train_labels)
    if cfg.bs * world_size > n_train:
        per = f" x {world_size} processes" if world_size > 1 else ""
        raise ConfigError(f"bs {cfg.bs}{per} is larger than the training set ({n_train} images); "
                          f"use --bs <= {n_train // world_size}")
    x_train, mean, std = normalize_images(data.train_images, device=device)
    x_test, _, _ = normalize_images(data.test_images, mean, std, device=device)
    if cfg.channels_last:
        x_train = x_train.contiguous(memory_format=torch.channels_last)
        x_test = x_test.contiguous(memory_format=torch.channels_last)
    y_train, y_test = data.train_labels.to(device), data.test_labels.to(device)
    train = DeviceBatches(x_train, y_train, cfg.bs, shuffle=True, drop_last=True, seed=cfg.seed,
                          rank=rank, world_size=world_size, shift=cfg.shift)
    # Validation needs no gradients, so it can use bigger batches for speed; results don't depend on bs.
    valid = DeviceBatches(x_test, y_test, max(cfg.bs, 1024), rank=rank, world_size=world_size)
    info = {"name": data.name, "source": str(data.source), "n_train": n_train, "n_valid": len(y_test),
            "classes": list(data.classes), "in_channels": int(x_train.shape[1]),
            "image_size": list(x_test.shape[2:]), "normalize": {"mean": mean, "std": std}}
    return train, valid, info


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centre `size` x `size` pixels of images [N, H, W] or [N, C, H, W].

    MNIST's digits were scaled into a 20x20 box and centred in 28x28 by their centre of mass, so the
    centre 20x20 holds 96.7% of the ink and a crop there costs ~half the compute of each conv layer.
    """
    h, w = images.shape[-2:]
    if size > min(h, w):
        raise ConfigError(f"crop {size} is larger than the {h}x{w} images; use --crop <= {min(h, w)}")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def fit_to_input(model: nn.Sequential, info: dict) -> nn.Sequential:
    """The book's CNN ends at a 1x1 grid for 28x28 inputs; for other sizes average the last grid first."""
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, info["in_channels"], *info["image_size"]))
    model.train()
    if out.ndim == 2:
        return model
    layers = list(model.named_children())
    return nn.Sequential(OrderedDict([*layers[:-1], ("pool", nn.AdaptiveAvgPool2d(1)), layers[-1]]))


def versions(device: torch.device) -> dict[str, str]:
    return {"convscope": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "threads": str(torch.get_num_threads())}


def default_run_name(cfg: TrainConfig) -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + Path(cfg.dataset).name


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


def train(cfg: TrainConfig, progress: bool = False, cbs: Sequence[Callback] = (), stats: bool = True,
          resume: str | Path | None = None, checkpoint_every: int | None = None) -> TrainResult:
    """Train simple_cnn as `cfg` says and write the run directory under `cfg.out`.

    stats: record ActivationStats (stats.npz; unless `cbs` already holds one), diagnose the run
    (findings.json) and write report.html into the run folder after fit.
    resume: a run folder to continue from its last checkpoint (use `resume_config` for its settings).
    SIGINT/SIGTERM stop training at the next batch boundary with everything flushed and a checkpoint
    written; `TrainResult.interrupted` then holds the signal number.

    Everything that can be wrong with the input is checked before the run folder is made, so a failed
    start leaves nothing behind.
    """
    if cfg.freeze and launch_env().distributed:  # before any process group: refuse, never rendezvous
        raise ConfigError("freeze does not work with several processes yet (DDP expects every parameter's "
                          "gradient at each step); train on one process or drop the freeze setting")
    dist_info, device = init_from_env(resolve_device(cfg.device))
    if resume is not None:
        cfg = per_rank_batch(cfg, resume, dist_info.world_size)
    torch.manual_seed(cfg.seed)  # the same on every rank: identical initial weights
    train_dl, valid_dl, info = build_batches(cfg, device, dist_info.rank, dist_info.world_size)
    model = simple_cnn(channels=cfg.channels, n_classes=len(info["classes"]), in_channels=info["in_channels"],
                       first_kernel=cfg.first_kernel, bn=cfg.bn, head=cfg.head, image_size=tuple(info["image_size"]))
    model = fit_to_input(model, info)
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
    info["world_size"], info["global_bs"] = dist_info.world_size, cfg.bs * dist_info.world_size
    config = {**cfg.to_dict(), "data": info, "versions": versions(device)}
    stopper = GracefulStop()
    callbacks: list[Callback] = [RunSaver(run_dir, config, checkpoint_every=checkpoint_every), NonFiniteGuard(),
                                 stopper, *cbs]
    if cfg.freeze:
        callbacks.append(FreezeLayers(cfg.freeze))
    if dist_info.distributed:
        callbacks.append(DistributedTrainer(device))
    if stats and not any(isinstance(cb, ActivationStats) for cb in cbs):
        callbacks.append(ActivationStats())
    if progress and dist_info.is_main:
        callbacks.append(ProgressBar())
    loss_func = F.cross_entropy
    if cfg.label_smoothing:
        loss_func = partial(F.cross_entropy, label_smoothing=cfg.label_smoothing)
    learn = Learner(model, train_dl, valid_dl, loss_func=loss_func, opt_func=cfg.opt, lr=cfg.lr, wd=cfg.wd,
                    cbs=callbacks, device=device)
    if cfg.compile:
        learn.train_model = compiled(model)
    result = TrainResult(learn, run_dir, cfg)
    try:
        with catch_signals(stopper):
            if cfg.schedule == "one-cycle":
                learn.fit_one_cycle(cfg.epochs, cfg.lr, pct_start=cfg.pct_start, div=cfg.div, div_final=cfg.div_final,
                                    moms=cfg.moms, resume=resume)
            else:
                learn.fit(cfg.epochs, cfg.lr, resume=resume)
    except BaseException:
        if resume is None and dist_info.is_main:  # a start that failed before writing anything leaves no folder
            _remove_if_empty(run_dir)
        raise
    finally:
        result.interrupted = stopper.signum
        # After a refused write (disk full, read-only) the diagnosis and report would only fail the same way.
        # Under torchrun a stop by signal is followed by SIGKILL after 30 s: no time for the report, which
        # `convscope report RUN` writes later from the saved files.
        late = dist_info.distributed and stopper.signum is not None
        if stats and learn.recorder.steps["loss"] and not isinstance(learn.exception, OSError) and dist_info.is_main \
                and not late:
            result.findings = finish_run(run_dir, learn.exception)
    return result


def per_rank_batch(cfg: TrainConfig, run_dir: str | Path, world_size: int) -> TrainConfig:
    """The per-process batch size that keeps a resumed run's global batch, whatever its process count.

    The global batch fixes the data order, the steps per epoch and the schedule, so keeping it makes a
    run resumed on a different number of processes continue exactly where it stopped.
    """
    saved = read_json(Path(run_dir) / "config.json")
    data = saved.get("data") if isinstance(saved, dict) else None
    global_bs = data.get("global_bs", cfg.bs) if isinstance(data, dict) else cfg.bs
    if not isinstance(global_bs, int) or global_bs < 1:
        raise RunError(f"{run_dir}/config.json has no usable global batch size ({global_bs!r})")
    if global_bs % world_size:
        raise ConfigError(f"the run was trained with a global batch of {global_bs}, which {world_size} processes "
                          f"cannot split evenly; resume with a process count that divides {global_bs}")
    return replace(cfg, bs=global_bs // world_size)


def compiled(model: nn.Module) -> nn.Module:
    """torch.compile(model), or the model itself (with a warning) where compiling is not possible here."""
    import warnings

    try:
        return torch.compile(model)
    except Exception as exc:  # no compiler, an unsupported platform...: train eagerly rather than fail
        warnings.warn(f"torch.compile is not available here ({exc}); training without it", stacklevel=2)
        return model


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # refuses a folder that holds anything, so no file is ever lost here
    except OSError:
        pass


def finish_run(run_dir: Path, exception: BaseException | None) -> list:
    """Diagnose the run and write findings.json and report.html (also after a failed fit)."""
    from .diagnose import diagnose, save_findings
    from .runs import load_run

    findings = diagnose(load_run(run_dir))
    stopped = getattr(exception, "finding", None)
    if stopped is not None:
        findings = [stopped, *(f for f in findings if f.rule != "healthy")]
    save_findings(run_dir, findings)
    write_report(run_dir)
    return findings
