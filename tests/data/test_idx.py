"""The IDX reader on the real MNIST / Fashion-MNIST files and on damaged copies of them."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convscope.data import read_idx, read_mnist_pair
from convscope.errors import DataError

# Per-class label counts copied from shared/data/README.md (not from the code under test).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    return read_mnist_pair(folder / f"{split}-images-idx3-ubyte.gz", folder / f"{split}-labels-idx1-ubyte.gz")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _idx_header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


# --- real files -----------------------------------------------------------------------------------------


def test_mnist_real_files_have_documented_shapes_and_label_counts(mnist_dir: Path) -> None:
    train_x, train_y = _pair(mnist_dir, "train")
    test_x, test_y = _pair(mnist_dir, "t10k")
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10000, 28, 28) and test_x.dtype == np.uint8
    assert train_y.dtype == np.int64 and test_y.dtype == np.int64
    assert np.bincount(train_y, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(test_y, minlength=10).tolist() == MNIST_TEST_COUNTS
    # Real digits: dark background, ink up to 255, and arrays are writable (torch.from_numpy needs that).
    assert test_x[:, 0, 0].max() == 0 and test_x.max() == 255
    assert test_x.flags.writeable and test_y.flags.writeable


def test_fashion_real_files_have_documented_shapes_and_label_counts(fashion_dir: Path) -> None:
    train_x, train_y = _pair(fashion_dir, "train")
    test_x, test_y = _pair(fashion_dir, "t10k")
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert np.bincount(train_y, minlength=10).tolist() == [6000] * 10
    assert np.bincount(test_y, minlength=10).tolist() == [1000] * 10


def test_gzip_is_detected_by_content_not_name(tmp_path: Path, mnist_dir: Path, raw_labels: bytes) -> None:
    gz = (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    expected = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert expected.shape == (10000,)
    # gzip data under a plain name, raw data under a .gz name, raw bytes and gzip bytes in memory.
    assert np.array_equal(read_idx(_write(tmp_path / "labels-no-ext", gz)), expected)
    assert np.array_equal(read_idx(_write(tmp_path / "raw.gz", raw_labels)), expected)
    assert np.array_equal(read_idx(raw_labels), expected)
    assert np.array_equal(read_idx(gz), expected)


@pytest.mark.parametrize(
    ("code", "dtype"),
    [(0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)],
)
def test_every_idx_type_is_read_big_endian(mnist_test, code: int, dtype: type) -> None:
    # The real labels, re-encoded in each IDX type: the values must survive the big-endian round trip.
    _, labels = mnist_test
    values = (labels.astype(dtype) * 3 - 7).astype(dtype)
    data = _idx_header(code, values.shape) + values.astype(np.dtype(dtype).newbyteorder(">")).tobytes()
    out = read_idx(data)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert np.array_equal(out, values)


# --- damaged copies -------------------------------------------------------------------------------------


def _mutated(raw: bytes, pos: int, value: int) -> bytes:
    data = bytearray(raw)
    data[pos] = value
    return bytes(data)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda raw: _mutated(raw, 0, 0x08), "bad magic"),
        (lambda raw: _mutated(raw, 1, 0x01), "bad magic"),
        (lambda raw: _mutated(raw, 2, 0x07), "unknown IDX type code 0x07"),
        (lambda raw: _mutated(raw, 3, 0), "0 dimensions"),
        (lambda raw: _mutated(raw, 3, 200)[:100], "declares 200 dimension(s) but the file ends after 100"),
        (lambda raw: _mutated(raw, 3, 20), "x... (19 dims)"),
        (lambda raw: raw[:-10], "declares 10000 uint8 items (10000 bytes)"),
        (lambda raw: raw[:-10], "holds 9990 bytes, about 9990 items (file truncated?)"),
        (lambda raw: raw + b"\x00" * 5, "trailing garbage"),
        (lambda raw: raw[:3], "too short for an IDX header"),
        (lambda raw: b"", "too short"),
    ],
    ids=["magic0", "magic1", "type", "ndim0", "ndim-huge", "ndim-many", "truncated", "truncated-count",
         "trailing", "header-cut", "empty"],
)
def test_damaged_raw_file_names_the_problem(tmp_path: Path, raw_labels: bytes, mutate, message: str) -> None:
    path = _write(tmp_path / "t10k-labels-idx1-ubyte", mutate(raw_labels))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as info:
        read_idx(path)
    msg = str(info.value)
    assert message in msg and "\n" not in msg and "re-download" in msg


def test_truncated_image_payload_counts_items(tmp_path: Path, raw_images: bytes) -> None:
    path = _write(tmp_path / "images", raw_images[: 16 + 784 * 9990 + 100])
    with pytest.raises(DataError, match=r"declares 10000 items of shape 28x28 uint8 .* about 9990 items"):
        read_idx(path)


def test_truncated_gzip(tmp_path: Path, mnist_dir: Path) -> None:
    gz = (mnist_dir / "t10k-images-idx3-ubyte.gz").read_bytes()
    path = _write(tmp_path / "t10k-images-idx3-ubyte.gz", gz[: len(gz) // 2])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: gzip stream ends .*truncated"):
        read_idx(path)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_corrupt_gzip_flipped_bytes(tmp_path: Path, mnist_dir: Path, where: float) -> None:
    data = bytearray((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    at = int(len(data) * where)
    for i in range(at, at + 4):
        data[i] ^= 0xFF
    path = _write(tmp_path / "t10k-labels-idx1-ubyte.gz", bytes(data))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: gzip .*corrupt"):
        read_idx(path)


def test_corrupt_gzip_crc(tmp_path: Path, mnist_dir: Path) -> None:
    data = bytearray((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    data[-8] ^= 0x01  # the CRC32 in the gzip trailer
    with pytest.raises(DataError, match="gzip data is corrupt"):
        read_idx(bytes(data))


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope.gz")
    with pytest.raises(DataError, match="is a folder"):
        read_idx(tmp_path)


# --- read_mnist_pair ------------------------------------------------------------------------------------


def test_pair_count_mismatch(mnist_dir: Path) -> None:
    with pytest.raises(DataError, match=r"10000 images but train-labels-idx1-ubyte.gz holds 60000 labels"):
        read_mnist_pair(mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "train-labels-idx1-ubyte.gz")


def test_pair_label_out_of_range(tmp_path: Path, mnist_dir: Path, raw_labels: bytes) -> None:
    bad = bytearray(raw_labels)
    bad[8 + 5] = 10  # label of item 5
    bad[8 + 70] = 200
    labels = _write(tmp_path / "t10k-labels-idx1-ubyte.gz", gzip.compress(bytes(bad)))
    with pytest.raises(DataError, match=r"label 10 at index 5 is outside 0\.\.9 \(2 bad label"):
        read_mnist_pair(mnist_dir / "t10k-images-idx3-ubyte.gz", labels)
    # The same file is fine for a reader that expects more classes.
    _, y = read_mnist_pair(mnist_dir / "t10k-images-idx3-ubyte.gz", labels, n_classes=201)
    assert y[5] == 10 and y[70] == 200


def test_pair_wrong_dims(mnist_dir: Path) -> None:
    images, labels = mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DataError, match=r"expected 3-D uint8 images .* found 1-D uint8 .*swapped"):
        read_mnist_pair(labels, images)
    with pytest.raises(DataError, match=r"expected 1-D labels \[N\] but found 3-D with shape 10000x28x28"):
        read_mnist_pair(images, images)


def test_pair_images_must_be_uint8(mnist_test) -> None:
    images, labels = mnist_test
    as_int32 = _idx_header(0x0C, images[:10].shape) + images[:10].astype(">i4").tobytes()
    labels_raw = _idx_header(0x08, (10,)) + labels[:10].astype(np.uint8).tobytes()
    with pytest.raises(DataError, match="found 3-D int32"):
        read_mnist_pair(as_int32, labels_raw)


def test_pair_float_labels_rejected(mnist_test) -> None:
    images, labels = mnist_test
    images_raw = _idx_header(0x08, images[:10].shape) + images[:10].tobytes()
    labels_raw = _idx_header(0x0D, (10,)) + labels[:10].astype(">f4").tobytes()
    with pytest.raises(DataError, match="labels must be integers but are float32"):
        read_mnist_pair(images_raw, labels_raw)


def test_pair_empty_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no images"):
        read_mnist_pair(_idx_header(0x08, (0, 28, 28)), _idx_header(0x08, (0,)))


def test_copies_in_tmp_dir_read_like_originals(tmp_path: Path, mnist_dir: Path, mnist_test) -> None:
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, tmp_path / name)
    x, y = _pair(tmp_path, "t10k")
    assert np.array_equal(x, mnist_test[0]) and np.array_equal(y, mnist_test[1])


# --- fuzzing: nothing but DataError ---------------------------------------------------------------------


def _read_or_data_error(data: bytes) -> None:
    try:
        out = read_idx(data)
    except DataError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(out, np.ndarray)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_data_error(data: bytes) -> None:
    _read_or_data_error(data)
    _read_or_data_error(b"\x1f\x8b" + data)  # claims to be gzip


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    images=st.booleans(),
    xor=st.binary(max_size=24),
    cut=st.integers(-1, 4000),
    tail=st.binary(max_size=4),
    gz=st.integers(-1, 300),
)
def test_mutated_real_headers_raise_only_data_error(
    raw_labels: bytes, raw_images: bytes, images: bool, xor: bytes, cut: int, tail: bytes, gz: int
) -> None:
    """Flip bits in the header of a real file, maybe cut or extend it, maybe gzip it and damage that."""
    # Real small files: the t10k labels, or the t10k images cut to their first 4 images (header says 4).
    data = bytearray(_mutated(raw_images[: 16 + 4 * 784], 7, 4) if images else raw_labels)
    for i, b in enumerate(xor):
        data[i] ^= b
    if cut >= 0:
        del data[cut:]
    data += tail
    blob = bytes(data)
    if gz >= 0:  # -1: raw; 0: intact gzip; k > 0: gzip with byte k - 1 damaged
        packed = bytearray(gzip.compress(blob, compresslevel=1, mtime=0))
        if 0 < gz <= len(packed):
            packed[gz - 1] ^= 0x5A
        blob = bytes(packed)
    _read_or_data_error(blob)
