"""Users' own images: one subfolder per class, read with Pillow.

Layouts accepted by `load_image_folder`:

- `root/<class>/<image>`: split at random (seeded, per class) into train and test;
- `root/train/<class>/<image>` + `root/valid/<class>/<image>` (or `root/test/...`): split as given;
  with only `root/train/`, that folder is split at random.

Image files are those ending in .png, .jpg, .jpeg, .bmp or .gif (any case); other files are ignored,
as are hidden entries and anything nested below a class folder. Classes are the sorted folder names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from convscope.data.sources import ImageData
from convscope.errors import ConfigError, DataError

__all__ = ["IMAGE_EXTENSIONS", "FolderData", "ImageFolderDataset", "load_image_folder"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})
MODES = ("L", "RGB")

# Pillow modes that hold one grey channel (16-bit and float ones included).
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


@dataclass
class FolderData(ImageData):
    """Images loaded from a folder tree: images uint8 `[N, C, H, W]` (C = 1 for "L", 3 for "RGB")."""

    mode: str = "L"


def load_image_folder(
    root: str | Path, mode: str | None = None, valid_pct: float = 0.2, seed: int = 0
) -> FolderData:
    """Load every image under `root` into memory as uint8 tensors `[N, C, H, W]`.

    `mode` is "L" (grey, C=1), "RGB" (C=3) or None: "L" when every image is stored grey (or with a
    palette of greys), else "RGB". Alpha is dropped. When the folder is not already split,
    `valid_pct` of each class (seeded by `seed`) becomes the test split. All images must share one size.
    """
    _check_mode(mode)
    if not 0.0 <= valid_pct < 1.0:
        raise ConfigError(f"valid_pct={valid_pct} is outside [0, 1); use e.g. 0.2 to hold out 20%")
    root = _check_root(root)

    train_dir, valid_dir = _split_dirs(root)
    classes, train_samples = _scan_classes(train_dir)
    if valid_dir is not None:
        _, valid_samples = _scan_classes(valid_dir, classes=classes)
    else:
        train_samples, valid_samples = _random_split(train_samples, valid_pct, seed)

    all_paths = [p for p, _ in train_samples] + [p for p, _ in valid_samples]
    arrays = _load_all(all_paths)
    if mode is None:
        mode = "L" if all(a.ndim == 2 for a in arrays) else "RGB"
    images = torch.from_numpy(_stack([_to_mode(a, mode) for a in arrays]))

    n_train = len(train_samples)
    labels = torch.tensor([c for _, c in train_samples] + [c for _, c in valid_samples], dtype=torch.int64)
    return FolderData(
        name=root.resolve().name,
        classes=classes,
        train_images=images[:n_train],
        train_labels=labels[:n_train],
        test_images=images[n_train:],
        test_labels=labels[n_train:],
        source=root,
        mode=mode,
    )


class ImageFolderDataset(Dataset):
    """A lazy `root/<class>/<image>` dataset: item i is `(uint8 tensor [C, H, W], label)`.

    For image sets that do not fit in memory; use with a `torch.utils.data.DataLoader`. With
    `mode=None` every file's header is read once here to choose "L" or "RGB" and to check sizes; with a
    mode given, only the first file is, and a differing size is reported when that item is loaded.
    """

    def __init__(self, root: str | Path, mode: str | None = None) -> None:
        _check_mode(mode)
        self.root = _check_root(root)
        self.classes, self.samples = _scan_classes(self.root)
        if mode is None:
            grey, self._size, self._size_path = _scan_headers([p for p, _ in self.samples])
            mode = "L" if grey else "RGB"
        else:
            _, self._size, self._size_path = _scan_headers([self.samples[0][0]])
        self.mode = mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        array = _load(path)
        size = (array.shape[1], array.shape[0])
        if size != self._size:
            raise _size_error(self._size_path, self._size, path, size)
        image = _to_mode(array, self.mode)
        return torch.from_numpy(image), label


# --- scanning -------------------------------------------------------------------------------------------


def _check_mode(mode: str | None) -> None:
    if mode is not None and mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not supported; use 'L' (grey), 'RGB' or None (detect)")


def _check_root(root: str | Path) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such folder; pass the folder that holds one subfolder per class")
    if not path.is_dir():
        raise DataError(
            f"{path}: is a file, not a folder; pass the folder that holds one subfolder per class"
        )
    return path


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_dirs(root: Path) -> tuple[Path, Path | None]:
    """(train folder, valid folder or None) following the layouts in the module docstring."""
    train = root / "train"
    if not train.is_dir():
        return root, None
    for name in ("valid", "test"):
        if (root / name).is_dir():
            return train, root / name
    return train, None


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def _scan_classes(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and (path, label) samples of `folder/<class>/<image>`.

    With `classes` given (a valid split), its subfolders must be among them; labels follow that list.
    """
    dirs = _subdirs(folder)
    hint = f"lay out images as {folder}/<class>/<image>.png"
    if not dirs:
        raise DataError(f"{folder}: has no class subfolders; {hint}")
    if classes is None:
        classes = [d.name for d in dirs]
        if len(classes) < 2:
            raise DataError(
                f"{folder}: has only one class folder ({classes[0]!r}); a classifier needs at least two "
                f"classes, {hint}"
            )
    else:
        extra = [d.name for d in dirs if d.name not in classes]
        if extra:
            raise DataError(
                f"{folder}: class folder(s) {', '.join(map(repr, extra))} have no counterpart among the "
                f"training classes {classes}; rename or remove them"
            )

    samples = []
    for d in dirs:
        files = _image_files(d)
        if not files:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise DataError(f"{d}: holds no images ({exts}); add images or remove the folder")
        label = classes.index(d.name)
        samples.extend((f, label) for f in files)
    return classes, samples


def _random_split(
    samples: list[tuple[Path, int]], valid_pct: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Hold out round(valid_pct * n) of each class, so small classes are represented in both splits."""
    rng = np.random.default_rng(seed)
    labels = np.array([c for _, c in samples])
    valid = np.zeros(len(samples), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_valid = int(round(valid_pct * len(members)))
        valid[rng.permutation(members)[:n_valid]] = True
    # Keep the scanned (class, file name) order inside each split: deterministic and easy to inspect.
    pairs = list(zip(samples, valid, strict=True))
    return [s for s, v in pairs if not v], [s for s, v in pairs if v]


# --- decoding -------------------------------------------------------------------------------------------


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except PermissionError as exc:  # the file may be a fine image: the fix is its permissions, not a new copy
        raise DataError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise _open_error(path, exc) from None


def _open_error(path: Path, exc: Exception) -> DataError:
    return DataError(f"{path}: Pillow cannot open it as an image ({exc}); delete or replace the file")


def _is_grey(img: Image.Image) -> bool:
    if img.mode in _GREY_MODES:
        return True
    if img.mode in ("P", "PA"):
        palette = img.getpalette() or []
        return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
    return False


def _load(path: Path) -> np.ndarray:
    """Decode one image to uint8 `[H, W]` (grey) or `[H, W, 3]` (colour)."""
    try:
        with _open(path) as img:
            if img.mode.startswith("I;16"):
                # 16-bit grey: keep the top byte rather than let convert("L") clip everything above 255.
                return (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
            return np.asarray(img.convert("L" if _is_grey(img) else "RGB"))
    except DataError:
        raise
    except Exception as exc:  # truncated or damaged pixel data only shows up when decoding
        raise _open_error(path, exc) from None


def _scan_headers(paths: list[Path]) -> tuple[bool, tuple[int, int], Path]:
    """(all grey?, size (W, H) of the first, first path) reading only headers; raises on differing sizes."""
    grey, first_size, first_path = True, None, paths[0]
    for path in paths:
        with _open(path) as img:
            grey = grey and _is_grey(img)
            if first_size is None:
                first_size = img.size
            elif img.size != first_size:
                raise _size_error(first_path, first_size, path, img.size)
    return grey, first_size, first_path


def _load_all(paths: list[Path]) -> list[np.ndarray]:
    arrays, first = [], None
    for path in paths:
        array = _load(path)
        if first is None:
            first = (path, array.shape[:2])
        elif array.shape[:2] != first[1]:
            (h0, w0), (h, w) = first[1], array.shape[:2]
            raise _size_error(first[0], (w0, h0), path, (w, h))
        arrays.append(array)
    return arrays


def _size_error(a: Path, size_a: tuple[int, int], b: Path, size_b: tuple[int, int]) -> DataError:
    return DataError(
        f"images differ in size: {a} is {size_a[0]}x{size_a[1]} but {b} is {size_b[0]}x{size_b[1]} "
        "(width x height); resize them all to one size first"
    )


def _to_mode(array: np.ndarray, mode: str) -> np.ndarray:
    """`[H, W]` or `[H, W, 3]` uint8 -> `[C, H, W]` in `mode`."""
    if mode == "L":
        if array.ndim == 3:
            array = np.asarray(Image.fromarray(array, "RGB").convert("L"))
        return array[None].copy()
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def _stack(images: list[np.ndarray]) -> np.ndarray:
    return np.stack(images) if images else np.zeros((0, 1, 0, 0), dtype=np.uint8)
