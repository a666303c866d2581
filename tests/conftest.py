"""Fixtures shared by all tests: the real MNIST files beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("CONVSCOPE_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder holding mnist/ and fashion-mnist/ (the checksum-verified real files)."""
    if not (SHARED_DATA / "mnist").is_dir():
        pytest.skip(f"real MNIST not found at {SHARED_DATA}; set CONVSCOPE_TEST_DATA")
    return SHARED_DATA


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
