"""One training run from a TrainConfig: data, model, learner, run directory. What `convscope train` does."""

from __future__ import annotations

import platform
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .config import TrainConfig
from .data.batches import DeviceBatches, normalize_images
from .data.folders import load_image_folder
from .data.sources import DATASETS, ImageData, load_dataset
from .devices import resolve_device
from .errors import ConfigError
from .models.cnn import simple_cnn
from .runs.saver import RunSaver
from .runs.store import create_run_dir
from .train.callback import Callback
from .train.learner import Learner
from .train.progress import ProgressBar


@dataclass
class TrainResult:
    learn: Learner
    run_dir: Path
    config: TrainConfig

    @property
    def metrics(self) -> list[dict]:
        return self.learn.recorder.epochs


def load_data(cfg: TrainConfig) -> ImageData:
    """A registered dataset or a folder of IDX files -> load_dataset; a folder of class folders -> images."""
    path = Path(cfg.dataset)
    if cfg.dataset.lower() not in DATASETS and path.is_dir() and not any(path.glob("*-ubyte*")):
        return load_image_folder(path)
    return load_dataset(cfg.dataset, root=cfg.data_root)


def build_batches(cfg: TrainConfig, device: torch.device):
    """Load the dataset and return (train batches, valid batches, data info)."""
    data = load_data(cfg)
    n_train = len(data.train_labels)
    if cfg.bs > n_train:
        raise ConfigError(f"bs {cfg.bs} is larger than the training set ({n_train} images); use --bs <= {n_train}")
    x_train, mean, std = normalize_images(data.train_images, device=device)
    x_test, _, _ = normalize_images(data.test_images, mean, std, device=device)
    y_train, y_test = data.train_labels.to(device), data.test_labels.to(device)
    train = DeviceBatches(x_train, y_train, cfg.bs, shuffle=True, drop_last=True, seed=cfg.seed)
    # Validation needs no gradients, so it can use bigger batches for speed; results don't depend on bs.
    valid = DeviceBatches(x_test, y_test, max(cfg.bs, 1024))
    info = {"name": data.name, "source": str(data.source), "n_train": n_train, "n_valid": len(y_test),
            "classes": list(data.classes), "in_channels": int(x_train.shape[1]),
            "image_size": list(x_train.shape[2:]), "normalize": {"mean": mean, "std": std}}
    return train, valid, info


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


def train(cfg: TrainConfig, progress: bool = False, cbs: Sequence[Callback] = ()) -> TrainResult:
    """Train simple_cnn as `cfg` says and write the run directory under `cfg.out`.

    Everything that can be wrong with the input is checked before the run folder is made, so a failed
    start leaves nothing behind.
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    train_dl, valid_dl, info = build_batches(cfg, device)
    model = simple_cnn(channels=cfg.channels, n_classes=len(info["classes"]), in_channels=info["in_channels"],
                       first_kernel=cfg.first_kernel, bn=cfg.bn)
    model = fit_to_input(model, info)
    run_dir = create_run_dir(cfg.out, cfg.name or default_run_name(cfg))
    config = {**cfg.to_dict(), "data": info, "versions": versions(device)}
    callbacks: list[Callback] = [RunSaver(run_dir, config), *cbs]
    if progress:
        callbacks.append(ProgressBar())
    learn = Learner(model, train_dl, valid_dl, lr=cfg.lr, wd=cfg.wd, cbs=callbacks, device=device)
    if cfg.schedule == "one-cycle":
        learn.fit_one_cycle(cfg.epochs, cfg.lr, pct_start=cfg.pct_start)
    else:
        learn.fit(cfg.epochs, cfg.lr)
    return TrainResult(learn, run_dir, cfg)
