"""Where MNIST-style datasets come from: a registry of known files, a search of local folders, and a
verified download into the user's cache.

Search order in `find_dataset` (first complete folder wins):

1. an explicit `root` (the four files directly in it, or in `root/<name>/`); if it lacks them that is an
   error, never a silent download;
2. `$CONVSCOPE_DATA/<name>/`;
3. the user cache `<cache_dir()>/<name>/`;
4. a download into that cache folder (unless `download=False`), with a progress bar on a terminal.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from convscope.data.idx import read_mnist_pair
from convscope.data.progress import DownloadDisplay
from convscope.errors import DataError, DownloadError

__all__ = [
    "DATASETS",
    "DatasetFile",
    "DatasetSpec",
    "ImageData",
    "MnistData",
    "cache_dir",
    "download_dataset",
    "find_dataset",
    "load_dataset",
]

log = logging.getLogger(__name__)

ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class DatasetFile:
    """One published file with the size and checksums it must have."""

    filename: str
    size: int
    md5: str
    sha256: str


@dataclass(frozen=True)
class DatasetSpec:
    """A known dataset: its four files (keyed by ROLES), class names and public mirrors."""

    name: str
    classes: tuple[str, ...]
    files: dict[str, DatasetFile]
    mirrors: tuple[str, ...]


def _files(sizes_md5_sha: dict[str, tuple[int, str, str]]) -> dict[str, DatasetFile]:
    names = dict(zip(ROLES, ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"), strict=True))
    return {role: DatasetFile(names[role], *sizes_md5_sha[role]) for role in ROLES}


# Sizes and checksums are those of the canonical published .gz files (see shared/data/README.md).
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        classes=tuple(str(d) for d in range(10)),
        files=_files({
            "train_images": (9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                             "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            "train_labels": (28881, "d53e105ee54ea40749a09fcbcd1e9432",
                             "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            "test_images": (1648877, "9fb629c4189551a2d022fa330f9573f3",
                            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            "test_labels": (4542, "ec29112dd5afa0611ce80d1b7f02629c",
                            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        }),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        files=_files({
            "train_images": (26421880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                             "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            "train_labels": (29515, "25c81989df183df01b3e8a0aad5dffbe",
                             "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            "test_images": (4422102, "bef4ecab320f06d8554ea6380940ec79",
                            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            "test_labels": (5148, "bb300cfdad3c16e7a12a480ee83cd310",
                            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        }),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
}

# The file names are the same for every MNIST-style dataset; folders given by path use them too.
_FILENAMES = {role: spec.filename for role, spec in DATASETS["mnist"].files.items()}


@dataclass
class ImageData:
    """A labelled image dataset held in memory, split into train and test.

    Images are uint8 tensors: `[N, H, W]` for IDX datasets (MNIST, Fashion-MNIST), `[N, C, H, W]` for
    image folders. Labels are int64 `[N]` indexing `classes`. `source` is the folder the data came from.
    """

    name: str
    classes: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: Path

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of one image, with C = 1 for `[N, H, W]` data."""
        shape = tuple(self.train_images.shape[1:])
        return (1, *shape) if len(shape) == 2 else shape  # type: ignore[return-value]

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclass
class MnistData(ImageData):
    """MNIST or Fashion-MNIST (or a folder of the same four IDX files): images uint8 `[N, 28, 28]`."""


def cache_dir() -> Path:
    """The user cache: `$CONVSCOPE_CACHE`, else `$XDG_CACHE_HOME/convscope`, else `~/.cache/convscope`."""
    if os.environ.get("CONVSCOPE_CACHE"):
        return Path(os.environ["CONVSCOPE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "convscope"
    return Path.home() / ".cache" / "convscope"


def find_dataset(
    name: str,
    root: str | Path | None = None,
    download: bool = True,
    mirrors: list[str] | None = None,
) -> Path:
    """Return the folder holding the four files of dataset `name` (see the module docstring for the order).

    Files may be present gzipped (`*.gz`) or uncompressed (same name without `.gz`).
    """
    spec = _spec(name)
    if root is not None:
        return _from_root(spec.name, Path(root).expanduser())

    looked: list[str] = []
    candidates = []
    if os.environ.get("CONVSCOPE_DATA"):
        candidates.append(Path(os.environ["CONVSCOPE_DATA"]).expanduser() / spec.name)
    cache = cache_dir() / spec.name
    candidates.append(cache)
    for folder in candidates:
        if not _missing(folder):
            return folder
        looked.append(str(folder))

    if not download:
        raise DataError(
            f"{spec.name}: not found in {' or '.join(looked)}; pass root=<folder with the four files>, "
            f"set CONVSCOPE_DATA=<folder holding {spec.name}/>, or allow downloading"
        )
    return download_dataset(spec.name, cache, mirrors=mirrors)


def download_dataset(
    name: str,
    dest: str | Path,
    mirrors: list[str] | None = None,
    retries: int = 3,
    timeout: float = 10.0,
    backoff: float = 1.0,
    progress: bool = True,
) -> Path:
    """Download the four files of dataset `name` into `dest`, verified by size, MD5 and SHA-256.

    Each file is tried at each mirror in turn, up to `retries` times per mirror when the mirror answered
    but the failure may be transient (HTTP 5xx/429, connection reset, a stall of `timeout` seconds once
    connected, short transfer), sleeping `backoff * 2**attempt` seconds in between. A mirror that cannot
    be reached (name not resolved, connection refused, network unreachable, no connection within
    `timeout`) is not tried again: offline, retrying only delays the error. A file is streamed into
    `dest/.<file>.part-<pid>` and moved into place only once verified; on any failure that temporary file
    is removed. Files already present and verified are kept. `progress`: a bar on stderr when it is a
    terminal, else one line per file downloaded. Raises `DownloadError` (one line: each mirror's reason,
    and the ways to supply the files by hand) when no mirror yields a good copy.
    """
    spec = _spec(name)
    dest = Path(dest).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"{dest}: cannot create the download folder ({exc.strerror or exc}); "
                            "pass a writable folder or set CONVSCOPE_CACHE") from None
    bases = list(mirrors) if mirrors is not None else list(spec.mirrors)
    if not bases:
        raise DownloadError(f"{spec.name}: no mirrors given; pass at least one base URL")

    wanted = []
    for role in ROLES:
        file = spec.files[role]
        final = dest / file.filename
        if (dest / file.filename.removesuffix(".gz")).is_file():
            continue  # an uncompressed copy cannot be checked against the .gz checksums; the reader checks it
        if final.is_file():
            if _verify_file(final, file) is None:
                continue
            log.warning("%s fails verification; downloading it again", final)
        wanted.append(file)
    if wanted:
        with DownloadDisplay(show=progress) as display:
            for file in wanted:
                _download_file(spec.name, file, dest / file.filename, bases, retries, timeout, backoff, display)
    return dest


def load_dataset(
    name: str = "mnist",
    root: str | Path | None = None,
    download: bool = True,
    mirrors: list[str] | None = None,
) -> MnistData:
    """Load a known dataset (`"mnist"`, `"fashion-mnist"`) or a folder holding the four IDX files.

    When `name` is a folder path, the dataset is named after the folder and its classes are "0".."9".
    """
    key = _normalise(name)
    if key in DATASETS:
        spec = DATASETS[key]
        folder = find_dataset(key, root=root, download=download, mirrors=mirrors)
        display, classes = spec.name, list(spec.classes)
    elif Path(name).expanduser().is_dir():
        if root is not None:
            raise DataError(f"{name}: give either a dataset folder as the name or root=, not both")
        folder = Path(name).expanduser()
        missing = _missing(folder)
        if missing:
            raise DataError(
                f"{folder}: missing {', '.join(missing)}; put the four MNIST-style IDX files there"
            )
        display, classes = folder.resolve().name, [str(d) for d in range(10)]
    elif Path(name).expanduser().exists():
        raise DataError(f"{name}: is a file, not a folder; pass the folder that holds the four IDX files")
    elif any(sep in name for sep in ("/", os.sep)) or name.startswith((".", "~")):
        # It reads as a path, so "unknown dataset" would mislead: say the folder is not there.
        raise DataError(f"{name}: no such folder; pass a folder of IDX files or class folders, or one of the "
                        f"known datasets: {', '.join(DATASETS)}")
    else:
        _spec(name)  # raises the unknown-name error
        raise AssertionError("unreachable")

    files = _present(folder)
    train_x, train_y = read_mnist_pair(files["train_images"], files["train_labels"], n_classes=len(classes))
    test_x, test_y = read_mnist_pair(files["test_images"], files["test_labels"], n_classes=len(classes))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{folder}: train images are {train_x.shape[1]}x{train_x.shape[2]} but test images are "
            f"{test_x.shape[1]}x{test_x.shape[2]}; use files from the same dataset"
        )
    return MnistData(
        name=display,
        classes=classes,
        train_images=torch.from_numpy(train_x),
        train_labels=torch.from_numpy(train_y),
        test_images=torch.from_numpy(test_x),
        test_labels=torch.from_numpy(test_y),
        source=folder,
    )


# --- lookup helpers -------------------------------------------------------------------------------------


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _spec(name: str) -> DatasetSpec:
    spec = DATASETS.get(_normalise(name))
    if spec is None:
        raise DataError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)} "
            "(or pass a folder holding the four IDX files)"
        )
    return spec


def _present(folder: Path) -> dict[str, Path]:
    """Role -> path of the files found in `folder`, preferring the .gz name, then the uncompressed one."""
    found = {}
    for role, filename in _FILENAMES.items():
        for candidate in (folder / filename, folder / filename.removesuffix(".gz")):
            if candidate.is_file():
                found[role] = candidate
                break
    return found


def _missing(folder: Path) -> list[str]:
    present = _present(folder)
    return [filename for role, filename in _FILENAMES.items() if role not in present]


def _from_root(name: str, root: Path) -> Path:
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "no such folder"
        raise DataError(f"{root}: {what}; pass root=<folder holding the four {name} files or {name}/>")
    if not _missing(root):
        return root
    sub = root / name
    if sub.is_dir():
        if not _missing(sub):
            return sub
        raise DataError(f"{sub}: missing {', '.join(_missing(sub))}; put the four {name} files there "
                        "(or leave root unset to use the cache and download)")
    raise DataError(f"{root}: missing {', '.join(_missing(root))} (and no {name}/ subfolder holds them); "
                    f"put the four {name} files there (or leave root unset to use the cache and download)")


# --- download helpers -----------------------------------------------------------------------------------


class _Failure(Exception):
    """One failed attempt; `transient` says whether trying the same mirror again could help."""

    # Errors of reaching the server at all: offline or mirror gone. Trying again in a second does not help.
    UNREACHABLE = (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL)

    def __init__(self, reason: str, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


def _download_file(
    dataset: str,
    file: DatasetFile,
    final: Path,
    bases: list[str],
    retries: int,
    timeout: float,
    backoff: float,
    display: DownloadDisplay,
) -> None:
    reasons = []
    label = f"{dataset}/{file.filename}"
    task = display.add(label, file.size)
    for base in bases:
        url = base.rstrip("/") + "/" + file.filename
        for attempt in range(max(1, retries)):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            host = urllib.parse.urlsplit(url).netloc
            display.attempt(task, f"try {attempt + 1} at {host}" if attempt else host)
            try:
                _fetch_verified(url, file, final, timeout, lambda n: display.advance(task, n))
                log.info("downloaded %s from %s", final.name, url)
                display.done(task, label, file.size, url)
                return
            except _Failure as failure:
                reason = str(failure)
                if not failure.transient:
                    break
        tries = f" after {attempt + 1} tries" if attempt else ""
        reasons.append(f"{url}: {reason}{tries}")
    display.failed(task)
    # One line that says what failed and every way to go on without the network.
    raise DownloadError(
        f"could not download {label}: {'; '.join(reasons)}; check the network, or supply the four {dataset} "
        f"files yourself: pass --data-root FOLDER (root= in Python), set CONVSCOPE_DATA to a folder holding "
        f"{dataset}/, or put them in {final.parent}"
    )


def _fetch_verified(url: str, file: DatasetFile, final: Path, timeout: float, on_chunk: Any) -> None:
    """Stream `url` into a temp file beside `final`, verify it, then move it into place atomically."""
    part = final.with_name(f".{final.name}.part-{os.getpid()}")
    try:
        md5, sha, size = _stream(url, part, file.size, timeout, on_chunk)
        if size < file.size:
            raise _Failure(f"truncated: got {size} of {file.size} bytes", transient=True)
        if md5.hexdigest() != file.md5 or sha.hexdigest() != file.sha256:
            raise _Failure(f"checksum mismatch (MD5 {md5.hexdigest()}, expected {file.md5})", transient=False)
        os.replace(part, final)
    finally:
        # Runs on success too, where the file is already gone; on failure (or Ctrl-C) it removes the part.
        part.unlink(missing_ok=True)


def _stream(url: str, part: Path, expected: int, timeout: float, on_chunk: Any) -> tuple[Any, Any, int]:
    md5, sha, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            while chunk := response.read(1 << 16):
                size += len(chunk)
                if size > expected:  # stop early: a wrong file must not fill the disk
                    raise _Failure(f"longer than the expected {expected} bytes (wrong file?)", False)
                md5.update(chunk)
                sha.update(chunk)
                out.write(chunk)
                on_chunk(len(chunk))
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the open response
        transient = exc.code >= 500 or exc.code in (408, 429)
        raise _Failure(f"HTTP {exc.code} {exc.reason}", transient=transient) from None
    except urllib.error.URLError as exc:  # urllib raises it while connecting and sending the request
        reason = f"no connection within {timeout:g} s" if isinstance(exc.reason, TimeoutError) \
            else _describe(exc.reason)
        raise _Failure(reason, transient=not _unreachable(exc.reason)) from None
    except TimeoutError:
        raise _Failure(f"timed out after {timeout:g} s", transient=True) from None
    except OSError as exc:  # connection reset, disk full writing the part file
        raise _Failure(_describe(exc), transient=True) from None
    except http.client.HTTPException as exc:  # IncompleteRead of a chunked body, garbled status line
        raise _Failure(f"{type(exc).__name__}: {exc}", transient=True) from None
    except ValueError as exc:  # urllib's "unknown url type" and friends: retrying cannot help
        raise _Failure(f"bad URL ({exc})", transient=False) from None
    return md5, sha, size


def _unreachable(reason: object) -> bool:
    """Whether `reason` (a URLError's) says the server could not be reached at all (a timeout there is one
    of connecting: a server that stalls after that raises a bare TimeoutError, which is retried)."""
    return isinstance(reason, (socket.gaierror, TimeoutError)) or (
        isinstance(reason, OSError) and reason.errno in _Failure.UNREACHABLE)


def _describe(reason: object) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason)


def _verify_file(path: Path, file: DatasetFile) -> str | None:
    """None if `path` has the published size and checksums, else the reason it does not."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    try:
        size = path.stat().st_size
        if size != file.size:
            return f"size {size}, expected {file.size}"
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                md5.update(chunk)
                sha.update(chunk)
    except OSError as exc:  # unreadable: treat like a bad copy, so it is downloaded again
        return f"unreadable ({exc.strerror or exc})"
    if md5.hexdigest() != file.md5 or sha.hexdigest() != file.sha256:
        return "checksum mismatch"
    return None
