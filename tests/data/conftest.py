"""Shared fixtures for the data tests: the real MNIST / Fashion-MNIST files and an isolated environment.

The real files are found as tests/conftest.py says (CONVSCOPE_TEST_DATA, else CONVSCOPE_DATA, else
`shared/data` beside the repository); tests that need them skip, with the reason, when they are absent.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from convscope.data import read_mnist_pair


@pytest.fixture(scope="session")
def data_root(real_data) -> Path:
    """The folder holding mnist/ and fashion-mnist/ with the real published .gz files."""
    return real_data("mnist", "fashion-mnist")


@pytest.fixture(scope="session")
def mnist_dir(real_data) -> Path:
    return real_data("mnist") / "mnist"


@pytest.fixture(scope="session")
def fashion_dir(real_data) -> Path:
    return real_data("fashion-mnist") / "fashion-mnist"


@pytest.fixture(scope="session")
def mnist_test(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The real MNIST t10k images [10000, 28, 28] uint8 and labels [10000] int64."""
    return read_mnist_pair(mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="session")
def raw_labels(mnist_dir: Path) -> bytes:
    """Uncompressed bytes of the real t10k labels file (8-byte header + 10000 labels)."""
    return gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())


@pytest.fixture(scope="session")
def raw_images(mnist_dir: Path) -> bytes:
    """Uncompressed bytes of the real t10k images file (16-byte header + 10000 x 28 x 28)."""
    return gzip.decompress((mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes())


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the user cache at a fresh folder and hide any CONVSCOPE_DATA, so no test touches ~/.cache."""
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("CONVSCOPE_CACHE", str(cache))
    monkeypatch.delenv("CONVSCOPE_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return cache
