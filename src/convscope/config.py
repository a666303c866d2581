"""Settings of a training run, validated when they are made (so a bad value fails before any work)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from convscope.errors import ConfigError

SCHEDULES = ("one-cycle", "constant")
# The optimizers `opt` may name; train/learner.py holds their factories, keyed by these names (config sits
# below train, so the names live here, where both can see them).
OPTIMIZER_NAMES = ("adamw", "sgd")
# The training precisions (train/learner.py maps them to autocast dtypes): float32, or autocast to bf16 / fp16.
PRECISIONS = ("32", "bf16", "fp16")
# The severities `stop_on` may name: those of runs/findings.py's SEVERITIES that ask for a change ("info" never
# stops a run). Listed here because config sits below runs; tests/diagnose/test_live.py checks they agree.
STOP_ON_SEVERITIES = ("high", "medium", "low")


# MODULE:FACTORY, e.g. "mymodels:resnet" or "pkg.models:Net.build": dotted Python names on both sides.
_MODEL_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def split_model_spec(spec: object) -> tuple[str, str]:
    """'pkg.module:factory' -> ('pkg.module', 'factory'); ConfigError for anything else."""
    if not isinstance(spec, str) or not _MODEL_SPEC.fullmatch(spec):
        raise ConfigError(f"model must be MODULE:FACTORY such as mymodels:resnet (a function of in_channels and "
                          f"n_classes that returns an nn.Module), got {spec!r}")
    module, _, attr = spec.partition(":")
    return module, attr


# The changes to a built model a rerun may apply (models/changes.py says what each does).
MODEL_CHANGES = ("init", "unfreeze", "dropout", "activation", "remove", "normalize_input")


def check_model_changes(changes: object) -> None:
    """A ConfigError naming the first key or value that is not one of the changes above."""
    if not isinstance(changes, dict):
        raise ConfigError(f"model_changes must map change names to values, got {changes!r}")
    for key, value in changes.items():
        ok = {
            "init": value == "default",
            "unfreeze": value is True,
            "dropout": isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1,
            "activation": value == "relu",
            "remove": isinstance(value, list) and all(isinstance(v, str) for v in value),
            "normalize_input": isinstance(value, str),
        }.get(key)
        if ok is None:
            raise ConfigError(f"unknown model change {key!r}; choose from {', '.join(MODEL_CHANGES)}")
        if not ok:
            raise ConfigError(f"model change {key}={value!r} is not valid (see convscope.models.changes)")


def is_whole_number(value: object, minimum: int = 1) -> bool:
    """An int >= minimum. A bool is not one, though Python counts it as an int: True is not a batch size."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_whole_number(name: str, value: object, minimum: int = 1, *, unit: str = "", note: str = "") -> None:
    """The one check of a whole-number setting: ConfigError "NAME must be a whole number >= MINIMUM, got VALUE"
    unless `is_whole_number(value, minimum)`. `unit` reads "a whole number of UNIT", `note` adds "(NOTE)"."""
    if not is_whole_number(value, minimum):
        of = f" of {unit}" if unit else ""
        why = f" ({note})" if note else ""
        raise ConfigError(f"{name} must be a whole number{of} >= {minimum}{why}, got {value!r}")


@dataclass
class TrainConfig:
    """What `convscope train` runs. Defaults are the fastai book's: simple_cnn + BatchNorm, bs 512,
    fit_one_cycle(1, 0.06)."""

    dataset: str = "mnist"  # "mnist", "fashion-mnist", or a folder of IDX files / class sub-folders
    data_root: str | None = None  # where to look for the dataset files (else CONVSCOPE_DATA, cache, download)
    epochs: float = 1  # fractions allowed: 1.5 = one epoch and half of the next
    lr: float = 0.06
    bs: int = 512  # per process; under torch.distributed the global batch is bs x world size
    bn: bool = True
    schedule: str = "one-cycle"
    pct_start: float = 0.25
    div: float = 25.0  # one-cycle starts at lr / div ...
    div_final: float = 1e5  # ... and ends at lr / div_final
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95)  # momentum (Adam's beta1): start, middle, end
    wd: float = 0.01
    opt: str = "adamw"
    label_smoothing: float = 0.0
    channels_last: bool = False  # NHWC memory layout for model and data
    compile: bool = False  # torch.compile the model (falls back to eager, with a warning, if it fails)
    precision: str = "32"  # "32", "bf16" or "fp16": autocast the forward pass and loss (fp16 with loss scaling)
    sync_bn: bool = False  # multi-process: BatchNorm statistics over the global batch of all ranks
    recipe: str = "book"  # the named recipe these settings started from (see recipes.py)
    # "module:factory": a callable of in_channels= and n_classes= returning an nn.Module, imported with the
    # current folder on sys.path; None is the book's simple_cnn, which the next four settings shape.
    model: str | None = None
    channels: tuple[int, ...] = (8, 16, 32, 64)
    first_kernel: int = 5
    head: str = "conv"  # "conv" (the book's last conv) or "linear" (flatten + Linear; see models/cnn.py)
    crop: int | None = None  # train and validate on the centre crop x crop pixels (MNIST: digits fill the centre 20x20)
    shift: int = 0  # with crop: train on crops moved by up to this many pixels at random (validation: centre)
    freeze: dict[str, float] = field(default_factory=dict)  # layer -> share of training after which it stops
    seed: int = 42
    device: str = "auto"
    limit_train: int | None = None  # use only the first N training images (quick experiments, tests)
    # ActivationStats' recording interval: "auto" (chosen from measured time, stats/interval.py) or N steps
    stats_every: int | str = "auto"
    # Stop training at the first finding at least this severe (the rules run as it trains): None never stops.
    stop_on: str | None = None
    out: str = "runs"
    name: str | None = None
    # TensorBoard log folder: event files go to <tensorboard>/<run name> while the run trains (None: none)
    tensorboard: str | None = None
    # Changes to the built model (models/changes.py), set by `convscope rerun --apply-remedies` to check a
    # remedy that is a change to the model's code: {"init": "default"}, {"unfreeze": True}, ...
    model_changes: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Strings first: a resumed run's config.json may hold anything, and a number here would fail later
        # with an AttributeError deep inside data loading instead of this line.
        for name in ("dataset", "device", "out", "data_root", "name", "tensorboard"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):  # a pathlib.Path is fine; config.json holds it as text
                setattr(self, name, value := os.fspath(value))
            if not isinstance(value, str) and not (value is None and name in ("data_root", "name", "tensorboard")):
                raise ConfigError(f"{name} must be a string, got {value!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float)) or \
                not 0 < self.epochs < math.inf:
            raise ConfigError(f"epochs must be a number > 0 (fractions allowed), got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr!r}")
        check_whole_number("bs (batch size)", self.bs)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not (isinstance(self.pct_start, (int, float)) and 0 < self.pct_start < 1):
            raise ConfigError(f"pct_start must be in (0, 1), got {self.pct_start!r}")
        for name in ("div", "div_final"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 1):
                raise ConfigError(f"{name} must be a number >= 1 (the lr is divided by it), got {value!r}")
        self.moms = tuple(self.moms)
        if len(self.moms) != 3 or any(not (isinstance(m, (int, float)) and 0 <= m < 1) for m in self.moms):
            raise ConfigError(f"moms must be three numbers in [0, 1) (start, middle, end), got {self.moms!r}")
        if self.head not in ("conv", "linear"):
            raise ConfigError(f"unknown head {self.head!r}; choose conv or linear")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}")
        if self.opt not in OPTIMIZER_NAMES:
            raise ConfigError(f"unknown optimizer {self.opt!r}; choose {' or '.join(OPTIMIZER_NAMES)}")
        if not (isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 1):
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not (isinstance(self.wd, (int, float)) and math.isfinite(self.wd) and self.wd >= 0):
            raise ConfigError(f"wd (weight decay) must be >= 0, got {self.wd!r}")
        if self.model is not None:
            split_model_spec(self.model)
        self.channels = tuple(self.channels)
        if not self.channels or not all(is_whole_number(c) for c in self.channels):
            raise ConfigError(f"channels must be whole numbers >= 1, got {self.channels!r}")
        check_whole_number("first_kernel", self.first_kernel)
        if self.crop is not None:
            check_whole_number("crop", self.crop, unit="pixels")
        check_whole_number("shift", self.shift, 0, unit="pixels")
        if self.shift and self.crop is None:
            raise ConfigError(f"shift {self.shift} moves a crop around: give a crop too (e.g. --crop 20)")
        if not isinstance(self.freeze, dict) or any(
                not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1
                for k, v in self.freeze.items()):
            raise ConfigError(f"freeze must map layer names to fractions of training in [0, 1], got {self.freeze!r}")
        check_model_changes(self.model_changes)
        if self.limit_train is not None:
            check_whole_number("limit_train", self.limit_train)
        if self.stats_every != "auto":
            check_whole_number("stats_every", self.stats_every, note="or 'auto'")
        if self.stop_on is not None and self.stop_on not in STOP_ON_SEVERITIES:
            raise ConfigError(f"stop_on must be one of {', '.join(STOP_ON_SEVERITIES)} (stop at the first finding at "
                              f"least that severe), got {self.stop_on!r}")
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise ConfigError(f"run name {self.name!r} must be a plain folder name")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
