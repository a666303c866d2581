"""What every command that trains sets up the same way: the data, the model, the run's name and versions.

One copy of each, so that `convscope train`, `lr-find`, `lr-study` and `bs-sweep` train the same model on
the same data for the same settings.
"""

from __future__ import annotations

import platform
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from convscope._version import __version__
from convscope.config import TrainConfig
from convscope.data.batches import DeviceBatches, normalize_images
from convscope.data.folders import load_image_folder
from convscope.data.sources import DATASETS, ImageData, load_dataset
from convscope.errors import ConfigError
from convscope.models import memory
from convscope.models.changes import apply_model_changes
from convscope.models.cnn import simple_cnn
from convscope.models.factory import build_from_factory, check_output, load_factory
from convscope.models.memory import MemoryEstimate, check_fits, estimate_training_memory


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


def build_model(cfg: TrainConfig, info: dict, device: torch.device | None = None,
                valid: DeviceBatches | None = None) -> nn.Module:
    """The model `cfg` describes (`cfg.model`'s factory, else the book's simple_cnn), for data described by
    `info` (build_batches' third result: its in_channels, image_size and classes). Every command that trains
    builds its model here.

    The model's output on a batch of the data's image shape must be [N, n_classes]. With `device`, the memory
    training needs at `cfg.bs` is estimated first, on a copy built on the meta device (nothing allocated),
    and a ConfigError says so when it cannot fit there. A model that cannot be built on the meta device is
    built for real first and measured with two small batches. `valid` (build_batches' validation batches,
    max(bs, 1024) images each) shrink, not below bs, to the largest batch the same estimate lets fit: a model
    that trains at bs 64 must not run out of memory validating 1024 images at once (the estimate of what
    training keeps per image bounds what a forward pass without gradients holds).
    """
    shape = (info["in_channels"], *info["image_size"])
    n_classes = len(info["classes"])
    if cfg.model is None:
        what = "simple_cnn"

        def make() -> nn.Module:
            model = simple_cnn(channels=cfg.channels, n_classes=n_classes, in_channels=info["in_channels"],
                               first_kernel=cfg.first_kernel, bn=cfg.bn, head=cfg.head,
                               image_size=tuple(info["image_size"]))
            return _fit_to_input(model, shape)
    else:
        what = f"the model of factory {cfg.model!r}"
        factory = load_factory(cfg.model)  # an import error is reported here, before anything is built

        def make() -> nn.Module:
            return build_from_factory(cfg.model, factory, info["in_channels"], n_classes)

    if cfg.model_changes:  # a rerun checking a remedy that is a change to the model's code
        make_as_written = make

        def make() -> nn.Module:
            model = make_as_written()
            apply_model_changes(model, cfg.model_changes)
            return model

    estimate = _estimate_on_meta(make, shape, cfg) if device is not None else None
    if estimate is not None:
        check_fits(estimate, device)
    model = make()
    check_output(model, shape, n_classes, what)
    if device is not None:
        if estimate is None:
            estimate = estimate_training_memory(model, shape, cfg.bs, cfg.opt)
            check_fits(estimate, device)
        if valid is not None:
            _fit_validation(valid, estimate, device)
    return model


def _fit_validation(valid: DeviceBatches, estimate: MemoryEstimate, device: torch.device) -> None:
    """Validation batches no larger than the memory allows (validation results do not depend on their size)."""
    limit = memory.available_memory(device)
    if limit is None or valid.bs <= estimate.bs:
        return
    valid.bs = max(estimate.bs, min(valid.bs, estimate.largest_bs(limit[0])))


def _estimate_on_meta(make: Callable[[], nn.Module], shape: tuple[int, ...], cfg: TrainConfig) -> MemoryEstimate | None:
    """The memory estimate of a copy of the model built on the meta device, or None where that copy cannot be
    built or run (a factory that loads weights, calls .item(), or fails: the real build then says why)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):  # the real build draws the same weights
            model = make()
            if not isinstance(model, nn.Module):
                return None
            return estimate_training_memory(model, shape, cfg.bs, cfg.opt)
    except Exception:
        return None


def _fit_to_input(model: nn.Sequential, shape: tuple[int, ...]) -> nn.Sequential:
    """The book's CNN ends at a 1x1 grid for 28x28 inputs; for other sizes average the last grid first."""
    first = next(model.parameters())
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, *shape, device=first.device))
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
