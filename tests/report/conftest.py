"""One real training run shared by the report tests, through `convscope train`'s own code path.

`experiment.train` on the first 15,360 training and 2,000 test images of real MNIST (written as an
IDX folder, which `--dataset PATH` accepts), bs 128, fit_one_cycle(1, 0.06): 120 steps. It records
ActivationStats at a fixed interval (every 4th step: the default interval is chosen from measured time,
stats/interval.py, and these tests need to know the rows) and writes report.html at the end; the plots
are checked against the arrays it recorded, and the report it wrote is opened in a browser. Tests that
change a run work on a copy.
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from convscope.runs.stats_data import ActivationStatsData

N_TRAIN, N_VALID, BS, EVERY = 15_360, 2_000, 128, 4


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed IDX file of unsigned bytes: magic (0, 0, 0x08, ndim), then big-endian dims."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.tobytes())


@pytest.fixture(scope="session")
def mnist_subset(mnist, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mnist-subset")
    for prefix, images, labels, n in (("train", mnist.train_images, mnist.train_labels, N_TRAIN),
                                      ("t10k", mnist.test_images, mnist.test_labels, N_VALID)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images[:n].numpy())
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels[:n].numpy())
    return folder


@pytest.fixture(scope="session")
def trained(mnist_subset, tmp_path_factory):
    """TrainResult (learn, run_dir, config) of the shared run; its folder holds stats.npz and report.html."""
    from convscope.config import TrainConfig
    from convscope.experiments import run_training
    from convscope.stats import ActivationStats

    cfg = TrainConfig(dataset=str(mnist_subset), bs=BS, out=str(tmp_path_factory.mktemp("runs")), name="book",
                      device="cpu")
    return run_training(cfg, cbs=[ActivationStats(every=EVERY)])


@pytest.fixture(scope="session")
def stats(trained) -> ActivationStatsData:
    """The recorded statistics as a later process sees them (stats.npz via load_run)."""
    from convscope import load_run

    return load_run(trained.run_dir).activation_stats


@pytest.fixture
def run_copy(trained, tmp_path) -> Callable[..., Path]:
    """Copy the shared run folder (without its report); optionally keep only some layers, renamed.

    Fewer layers keep the tests that write a report of their own quick.
    """

    def make(layers: list[str] | None = None, rename: dict[str, str] | None = None) -> Path:
        dst = tmp_path / "run"
        shutil.copytree(trained.run_dir, dst)
        (dst / "report.html").unlink()
        if layers is not None or rename:
            data = ActivationStatsData.load(dst / "stats.npz")
            idx = [data.index(n) for n in (layers or data.layers)]
            for name in ("mean", "std", "near_zero", "dead", "grad_norm", "update_ratio", "hist", "ran", "frozen",
                         "negative", "abs_near_zero"):
                if getattr(data, name) is not None:
                    setattr(data, name, getattr(data, name)[:, idx])
            data.hist_range = data.hist_range[idx]
            if getattr(data, "kinds", None):
                data.kinds = [data.kinds[i] for i in idx]
            data.layers = [(rename or {}).get(data.layers[i], data.layers[i]) for i in idx]
            data.save(dst / "stats.npz")
        return dst

    return make
