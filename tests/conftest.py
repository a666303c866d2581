"""Fixtures shared by all tests: the real MNIST files beside the repository.

The data folder is $CONVSCOPE_TEST_DATA, else $CONVSCOPE_DATA (the variable the CLI reads), else
`../shared/data` beside the repository. Without the files, tests that need them skip on a developer's
machine, and the run ends with one line counting them. In CI (CI=true) the run stops before any test
with one line instead: a CI run that skipped every data test would pass while testing almost nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# A test worker of pytest-xdist (pyproject.toml's addopts runs two): one torch thread in it and in the
# commands it starts, so two workers on two cores do not fight over them (oversubscribed, torch's threads
# spin and every op slows down several-fold).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

DATA_VARIABLES = ("CONVSCOPE_TEST_DATA", "CONVSCOPE_DATA")
DATA_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MISSING_DATA = "real test data missing"  # starts every skip reason for absent data; the summary counts them


def _data_folder() -> tuple[Path, str]:
    """The data folder and what chose it."""
    for name in DATA_VARIABLES:
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser(), f"named by {name}"
    return Path(__file__).resolve().parents[2] / "shared" / "data", "the default: shared/data beside the repository"


SHARED_DATA, DATA_SOURCE = _data_folder()


def missing_data(*datasets: str) -> str | None:
    """None when the data folder holds the four files of each of `datasets`, else one line saying what lacks."""
    for dataset in datasets:
        absent = [f"{dataset}/{f}" for f in DATA_FILES if not (SHARED_DATA / dataset / f).is_file()]
        if not SHARED_DATA.is_dir():
            problem = "does not exist"
        elif not (SHARED_DATA / dataset).is_dir():
            problem = f"has no {dataset}/"
        elif absent:
            problem = f"lacks {', '.join(absent)}"
        else:
            continue
        return (f"{MISSING_DATA}: the data folder {SHARED_DATA} ({DATA_SOURCE}) {problem}; put mnist/ and "
                "fashion-mnist/ there with their four .gz files each, or set CONVSCOPE_TEST_DATA or CONVSCOPE_DATA "
                "to the folder that holds them")
    return None


def require_data(*datasets: str) -> Path:
    """The data folder; skips the test (with the one-line reason) when it lacks any of `datasets`."""
    reason = missing_data(*datasets)
    if reason:
        pytest.skip(reason)
    return SHARED_DATA


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def pytest_configure(config: pytest.Config) -> None:
    reason = missing_data("mnist", "fashion-mnist") if in_ci() else None
    if reason:
        # Raised here, before the session starts, pytest prints only "Exit: <reason>": one line, no test run.
        pytest.exit(f"CI=true and {reason}", returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reasons = [report.longrepr[2] for report in terminalreporter.stats.get("skipped", [])
               if isinstance(report.longrepr, tuple) and MISSING_DATA in report.longrepr[2]]
    if reasons:
        # The reasons differ only in which dataset lacks files; the first one says where to put them.
        reason = reasons[0].removeprefix("Skipped: ")
        tests = "test" if len(reasons) == 1 else "tests"
        terminalreporter.write_line(f"{len(reasons)} {tests} skipped, {reason}", yellow=True)


@pytest.fixture(scope="session")
def real_data():
    """`require_data` for conftest files below this one (importlib mode lets them import no conftest)."""
    return require_data


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder holding mnist/ and fashion-mnist/ (the checksum-verified real files)."""
    return require_data("mnist")


@pytest.fixture(scope="session")
def mnist_subset(data_dir, tmp_path_factory):
    """`make(n_train, n_test)`: a new folder holding mnist/ with the first n_train training and n_test test
    images of real MNIST, as raw (uncompressed) IDX files with their headers' counts rewritten."""
    import gzip
    import math

    def make(n_train: int, n_test: int) -> Path:
        root = tmp_path_factory.mktemp(f"mnist-{n_train}-{n_test}")
        (root / "mnist").mkdir()
        for gz in DATA_FILES:
            name = gz.removesuffix(".gz")
            raw = gzip.decompress((data_dir / "mnist" / gz).read_bytes())
            n = n_train if name.startswith("train") else n_test
            dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(raw[3])]
            item = math.prod(dims[1:])
            header = bytes([0, 0, raw[2], len(dims)]) + b"".join(d.to_bytes(4, "big") for d in (n, *dims[1:]))
            (root / "mnist" / name).write_bytes(header + raw[4 + 4 * len(dims) :][: n * item])
        return root

    return make


@pytest.fixture(scope="session")
def mnist(data_dir):
    from convscope.data.sources import load_dataset

    return load_dataset("mnist", root=data_dir)


@pytest.fixture(scope="session")
def mnist_tensors(mnist):
    """Normalised float tensors (x_train, y_train, x_test, y_test) of real MNIST."""
    from convscope.data.batches import normalize_images

    x, mean, std = normalize_images(mnist.train_images)
    xt, _, _ = normalize_images(mnist.test_images, mean, std)
    return x, mnist.train_labels, xt, mnist.test_labels


@pytest.fixture
def fresh_dynamo():
    """torch.compile's caches and counters emptied before and after the test, so that its graph and recompile
    counts are its own (the compile tests read torch._dynamo.utils.counters and guard_failures)."""
    import torch._dynamo
    from torch._dynamo.utils import counters, guard_failures

    torch._dynamo.reset()
    counters.clear()
    guard_failures.clear()
    yield
    torch._dynamo.reset()
