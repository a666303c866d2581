"""Read IDX files (the MNIST file format), raw or gzip-compressed, and check them thoroughly.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values in C order, big-endian. Every way a download or a copy
can go wrong (wrong file, truncated, padded, bit-flipped) ends in a `DataError` that names the file and
says what to do, never in a numpy or zlib traceback.
"""

from __future__ import annotations

import gzip
import os
import zlib
from math import prod
from pathlib import Path

import numpy as np

from convscope.errors import DataError

__all__ = ["IDX_TYPES", "read_idx", "read_mnist_pair"]

# Type code -> big-endian numpy dtype, as listed in the IDX format description.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_FIX = "delete it and run again to re-download, or replace it with a good copy"

PathOrBytes = str | os.PathLike | bytes | bytearray | memoryview


def read_idx(source: PathOrBytes) -> np.ndarray:
    """Read one IDX file and return its array in native byte order (writable).

    `source` is a path or the file's bytes. Gzip is detected by its magic bytes (1f 8b), not by the file
    name, so a compressed file without `.gz` or a raw file named `.gz` both work.

    Raises `DataError` when the file is missing or unreadable, the gzip stream is truncated or corrupt,
    the magic number or type code is not IDX, or the payload is shorter or longer than the header says.
    """
    name, data = _read_bytes(source)
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(name, data)
    return _parse(name, data)


def read_mnist_pair(
    images_path: PathOrBytes, labels_path: PathOrBytes, n_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file and its labels file and check that they belong together.

    Returns `(images, labels)`: images uint8 `[N, H, W]`, labels int64 `[N]` with values in
    `0..n_classes-1`. Raises `DataError` on shape, dtype, count or label-range problems.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    img_name, lab_name = _display_name(images_path), _display_name(labels_path)

    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{img_name}: expected 3-D uint8 images [N, H, W] but found {images.ndim}-D {images.dtype} "
            f"with shape {_shape(images.shape)}; check that the images and labels files are not swapped"
        )
    if labels.ndim != 1:
        raise DataError(
            f"{lab_name}: expected 1-D labels [N] but found {labels.ndim}-D with shape "
            f"{_shape(labels.shape)}; check that the images and labels files are not swapped"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{lab_name}: labels must be integers but are {labels.dtype}; use an integer IDX labels file"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{img_name} holds {len(images)} images but {lab_name} holds {len(labels)} labels; "
            "use the images and labels files of the same split (train with train, t10k with t10k)"
        )
    if len(images) == 0:
        raise DataError(f"{img_name}: holds no images; {_FIX}")

    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        first = int(bad[0])
        raise DataError(
            f"{lab_name}: label {int(labels[first])} at index {first} is outside 0..{n_classes - 1} "
            f"({bad.size} bad label(s) in all); {_FIX}"
        )
    return images, labels.astype(np.int64)


def _display_name(source: PathOrBytes) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    return Path(source).name


def _read_bytes(source: PathOrBytes) -> tuple[str, bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>", bytes(source)
    path = Path(source)
    try:
        return path.name, path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; check the path or let convscope download the data") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an IDX file; pass the file itself") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None


def _gunzip(name: str, data: bytes) -> bytes:
    # gzip.decompress reports a cut-off stream as EOFError and a damaged one as BadGzipFile (an OSError,
    # e.g. CRC or length mismatch) or zlib.error; all three are the file's fault, so all become DataError.
    try:
        return gzip.decompress(data)
    except EOFError:
        raise DataError(
            f"{name}: gzip stream ends before its end marker (file truncated or corrupt?); {_FIX}"
        ) from None
    except (OSError, zlib.error) as exc:
        raise DataError(f"{name}: gzip data is corrupt ({exc}); {_FIX}") from None


def _parse(name: str, data: bytes) -> np.ndarray:
    if len(data) < 4:
        raise DataError(
            f"{name}: only {len(data)} bytes, too short for an IDX header (file truncated?); {_FIX}"
        )
    if data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{name}: bad magic number 0x{data[:4].hex()} (an IDX file starts with two zero bytes); "
            f"this is not an IDX file, {_FIX}"
        )
    code, ndim = data[2], data[3]
    dtype = IDX_TYPES.get(code)
    if dtype is None:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise DataError(f"{name}: unknown IDX type code 0x{code:02X} (known: {known}); {_FIX}")
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions; {_FIX}")

    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{name}: header declares {ndim} dimension(s) but the file ends after {len(data)} bytes "
            f"(file truncated?); {_FIX}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))

    # Compare sizes with Python ints before touching numpy: a damaged header can declare petabytes.
    item_bytes = prod(dims[1:]) * dtype.itemsize
    expected = dims[0] * item_bytes
    actual = len(data) - header_len
    if actual != expected:
        held = f"{actual // item_bytes}" if item_bytes else "?"
        what = "file truncated?" if actual < expected else "trailing garbage?"
        items = f"items of shape {_shape(dims[1:])} {dtype.name}" if ndim > 1 else f"{dtype.name} items"
        raise DataError(
            f"{name}: declares {dims[0]} {items} ({expected} bytes) "
            f"but holds {actual} bytes, about {held} items ({what}); {_FIX}"
        )

    array = np.frombuffer(data, dtype=dtype, count=prod(dims), offset=header_len).reshape(dims)
    # astype copies: the result is native-endian and writable, so torch.from_numpy takes it without a warning.
    return array.astype(dtype.newbyteorder("="))


def _shape(dims: tuple[int, ...]) -> str:
    if not dims:
        return "()"
    if len(dims) > 6:  # a damaged header can declare up to 255 dims; keep the message one readable line
        return "x".join(str(d) for d in dims[:4]) + f"x... ({len(dims)} dims)"
    return "x".join(str(d) for d in dims)
