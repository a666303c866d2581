"""Image folders built from real MNIST digits saved as image files."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from convscope.data import FolderData, ImageData, ImageFolderDataset, load_image_folder
from convscope.errors import ConfigError, DataError

# Folder name -> MNIST digit. Sorted folder names are ["one", "two", "zero"], not the digit order.
CLASSES = {"zero": 0, "one": 1, "two": 2}
SORTED = sorted(CLASSES)


@pytest.fixture(scope="module")
def digits(mnist_test) -> dict[str, list[np.ndarray]]:
    """The first 12 real t10k images of digits 0, 1 and 2, keyed by class folder name."""
    images, labels = mnist_test
    return {name: [images[i] for i in np.flatnonzero(labels == d)[:12]] for name, d in CLASSES.items()}


def _save(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def _tint(grey: np.ndarray) -> np.ndarray:
    """A colour version of a digit: R = ink, G = 255 - ink, B = 0."""
    return np.stack([grey, 255 - grey, np.zeros_like(grey)], axis=-1)


def _make_folder(root: Path, digits, per_class: int = 5, ext: str = "png", colour: bool = False) -> Path:
    for name, images in digits.items():
        for i, img in enumerate(images[:per_class]):
            _save(_tint(img) if colour else img, root / name / f"{i:03d}.{ext}")
    return root


def _expected(digits, per_class: int, transform=lambda a: a[None]) -> tuple[np.ndarray, list[int]]:
    """Images [N, C, H, W] and labels in load order: sorted class names, then file names."""
    xs, ys = [], []
    for label, name in enumerate(SORTED):
        for img in digits[name][:per_class]:
            xs.append(transform(img))
            ys.append(label)
    return np.stack(xs), ys


def _hashes(images: torch.Tensor) -> list[str]:
    return [hashlib.md5(x.numpy().tobytes()).hexdigest() for x in images]


# --- loading --------------------------------------------------------------------------------------------


def test_grey_folder_loads_exactly(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "digits", digits)
    (root / "zero" / "notes.txt").write_text("not an image")  # ignored: not an image extension
    (root / "zero" / ".hidden.png").write_bytes(b"junk")  # ignored: hidden
    data = load_image_folder(root, valid_pct=0)
    assert isinstance(data, FolderData) and isinstance(data, ImageData)
    assert data.classes == SORTED and data.name == "digits" and data.source == root and data.mode == "L"
    x, y = _expected(digits, 5)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (15, 1, 28, 28)
    assert np.array_equal(data.train_images.numpy(), x)
    assert data.train_labels.dtype == torch.int64 and data.train_labels.tolist() == y
    assert data.test_images.shape == (0, 1, 28, 28) and data.test_labels.shape == (0,)
    assert data.image_shape == (1, 28, 28) and data.n_classes == 3


def test_rgb_mode_replicates_grey(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "d", digits, per_class=3)
    data = load_image_folder(root, mode="RGB", valid_pct=0)
    assert data.train_images.shape == (9, 3, 28, 28) and data.mode == "RGB"
    x, _ = _expected(digits, 3, transform=lambda a: np.stack([a, a, a]))
    assert np.array_equal(data.train_images.numpy(), x)


def test_colour_images_detected_as_rgb(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "c", digits, per_class=3, colour=True)
    data = load_image_folder(root, valid_pct=0)
    assert data.mode == "RGB" and data.train_images.shape == (9, 3, 28, 28)
    x, _ = _expected(digits, 3, transform=lambda a: _tint(a).transpose(2, 0, 1))
    assert np.array_equal(data.train_images.numpy(), x)
    # Forcing "L" converts with Pillow's luminance formula.
    grey = load_image_folder(root, mode="L", valid_pct=0)
    first = np.asarray(Image.fromarray(_tint(digits["one"][0])).convert("L"))
    assert np.array_equal(grey.train_images[0, 0].numpy(), first)


def test_one_colour_image_makes_the_folder_rgb(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "m", digits, per_class=2)
    _save(_tint(digits["two"][5]), root / "two" / "zz-colour.png")
    data = load_image_folder(root, valid_pct=0)
    assert data.mode == "RGB" and data.train_images.shape == (7, 3, 28, 28)
    assert np.array_equal(data.train_images[0].numpy(), np.stack([digits["one"][0]] * 3))


@pytest.mark.parametrize("ext", ["bmp", "gif", "PNG"])
def test_lossless_formats_load_exactly(tmp_path: Path, digits, ext: str) -> None:
    root = _make_folder(tmp_path / ext, digits, per_class=2, ext=ext)
    data = load_image_folder(root, valid_pct=0)
    assert data.mode == "L"
    assert np.array_equal(data.train_images.numpy(), _expected(digits, 2)[0])


def test_jpeg_loads_close_to_source(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "j", digits, per_class=2, ext="jpeg")
    _save(digits["one"][2], root / "one" / "extra.JPG")
    data = load_image_folder(root, valid_pct=0)
    assert data.train_images.shape == (7, 1, 28, 28)
    diff = (data.train_images[0, 0].int() - torch.from_numpy(digits["one"][0]).int()).abs().float().mean()
    assert diff < 8  # lossy, but the same digit


def test_palette_and_16bit_images(tmp_path: Path, digits) -> None:
    root = tmp_path / "p"
    grey_palette = [v for g in range(256) for v in (g, g, g)]
    for name in SORTED:
        (root / name).mkdir(parents=True)
        img = Image.fromarray(digits[name][0], "P")
        img.putpalette(grey_palette)
        img.save(root / name / "a.png")
        _save(digits[name][1].astype(np.uint16) * 257, root / name / "b.png")  # 16-bit grey
    data = load_image_folder(root, valid_pct=0)
    assert data.mode == "L"
    expected = np.stack([digits[n][i][None] for n in SORTED for i in (0, 1)])
    assert np.array_equal(data.train_images.numpy(), expected)
    # A palette with colours in it makes the folder RGB.
    img = Image.fromarray(digits["two"][3], "P")
    img.putpalette([v for g in range(256) for v in (g, 0, 0)])
    img.save(root / "two" / "c.png")
    assert load_image_folder(root, valid_pct=0).mode == "RGB"


# --- layouts and splits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("valid_name", ["valid", "test"])
def test_train_valid_layout(tmp_path: Path, digits, valid_name: str) -> None:
    root = tmp_path / "split"
    for name, images in digits.items():
        for i, img in enumerate(images[:4]):
            _save(img, root / "train" / name / f"{i}.png")
        if name != "one":  # a class may be absent from the validation split
            for i, img in enumerate(images[4:6]):
                _save(img, root / valid_name / name / f"{i}.png")
    data = load_image_folder(root, valid_pct=0.5)  # valid_pct is ignored: the split is given
    assert data.classes == SORTED
    assert data.train_images.shape == (12, 1, 28, 28) and data.test_images.shape == (4, 1, 28, 28)
    assert data.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.test_labels.tolist() == [1, 1, 2, 2]  # "two" and "zero"
    assert np.array_equal(data.test_images[0, 0].numpy(), digits["two"][4])


def test_valid_class_unknown_to_train_is_an_error(tmp_path: Path, digits) -> None:
    root = tmp_path / "split"
    for name in ("one", "two"):
        _save(digits[name][0], root / "train" / name / "a.png")
    _save(digits["zero"][0], root / "valid" / "zero" / "a.png")
    with pytest.raises(DataError, match=r"valid: class folder\(s\) 'zero' have no counterpart"):
        load_image_folder(root)


def test_only_train_folder_is_split_at_random(tmp_path: Path, digits) -> None:
    root = tmp_path / "t"
    _make_folder(root / "train", digits, per_class=10)
    data = load_image_folder(root, valid_pct=0.2)
    assert data.classes == SORTED and len(data.train_labels) == 24 and len(data.test_labels) == 6


def test_random_split_is_stratified_seeded_and_complete(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "s", digits, per_class=10)
    a = load_image_folder(root, valid_pct=0.2, seed=0)
    b = load_image_folder(root, valid_pct=0.2, seed=0)
    c = load_image_folder(root, valid_pct=0.2, seed=1)
    assert a.test_labels.tolist() == [0, 0, 1, 1, 2, 2]  # 20% of each class, in class order
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.train_images, b.train_images)
    assert not torch.equal(a.test_images, c.test_images)
    everything = load_image_folder(root, valid_pct=0)
    split_hashes = _hashes(a.train_images) + _hashes(a.test_images)
    assert sorted(split_hashes) == sorted(_hashes(everything.train_images))
    assert not set(_hashes(a.train_images)) & set(_hashes(a.test_images))
    # Labels still match their images after the split.
    by_hash = dict(zip(_hashes(everything.train_images), everything.train_labels.tolist(), strict=True))
    assert [by_hash[h] for h in _hashes(a.test_images)] == a.test_labels.tolist()


# --- the lazy dataset -----------------------------------------------------------------------------------


def test_lazy_dataset_with_dataloader(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "lazy", digits, per_class=4)
    ds = ImageFolderDataset(root)
    assert len(ds) == 12 and ds.classes == SORTED and ds.mode == "L"
    x, y = _expected(digits, 4)
    batches = list(DataLoader(ds, batch_size=5, shuffle=False))
    assert [b[0].shape for b in batches] == [(5, 1, 28, 28), (5, 1, 28, 28), (2, 1, 28, 28)]
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.from_numpy(x))
    assert torch.cat([b[1] for b in batches]).tolist() == y
    assert batches[0][0].dtype == torch.uint8


def test_lazy_dataset_modes(tmp_path: Path, digits) -> None:
    colour = _make_folder(tmp_path / "c", digits, per_class=2, colour=True)
    ds = ImageFolderDataset(colour)
    img, label = ds[0]
    assert ds.mode == "RGB" and img.shape == (3, 28, 28) and label == 0
    assert np.array_equal(img.numpy(), _tint(digits["one"][0]).transpose(2, 0, 1))
    grey = ImageFolderDataset(_make_folder(tmp_path / "g", digits, per_class=2), mode="RGB")
    assert grey[5][0].shape == (3, 28, 28) and grey[5][1] == 2


def test_lazy_dataset_errors(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "bad", digits, per_class=2)
    _save(digits["two"][0][:20, :24], root / "two" / "small.png")
    with pytest.raises(DataError, match=r"000\.png is 28x28 but .*small\.png is 24x20"):
        ImageFolderDataset(root)  # mode=None reads every header
    ds = ImageFolderDataset(root, mode="L")  # only the first header: found when the item is loaded
    small = [p.name for p, _ in ds.samples].index("small.png")
    assert ds[small - 1][0].shape == (1, 28, 28)
    with pytest.raises(DataError, match=r"small\.png is 24x20"):
        ds[small]
    (root / "two" / "small.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"small\.png: Pillow cannot open it"):
        ds[small]


# --- errors ---------------------------------------------------------------------------------------------


def _error(root: Path, **kw) -> str:
    with pytest.raises(DataError) as info:
        load_image_folder(root, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_root_missing_or_a_file(tmp_path: Path) -> None:
    assert "no such folder" in _error(tmp_path / "nope")
    (tmp_path / "f.png").write_bytes(b"")
    assert "is a file, not a folder" in _error(tmp_path / "f.png")


def test_no_class_subfolders(tmp_path: Path, digits) -> None:
    _save(digits["one"][0], tmp_path / "flat" / "a.png")
    msg = _error(tmp_path / "flat")
    assert "has no class subfolders" in msg and "<class>/<image>" in msg


def test_only_one_class(tmp_path: Path, digits) -> None:
    _save(digits["one"][0], tmp_path / "r" / "one" / "a.png")
    assert "only one class folder ('one')" in _error(tmp_path / "r")


def test_class_folder_without_images(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "r", digits, per_class=1)
    (root / "three").mkdir()
    (root / "three" / "readme.txt").write_text("no images here")
    msg = _error(root)
    assert str(root / "three") in msg and "holds no images" in msg


def test_unreadable_image_is_named(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "r", digits, per_class=2)
    (root / "one" / "broken.png").write_bytes(b"this is not a png")
    msg = _error(root)
    assert str(root / "one" / "broken.png") in msg and "Pillow cannot open it" in msg


def test_truncated_image_is_named(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "r", digits, per_class=2)
    good = (root / "two" / "000.png").read_bytes()
    (root / "two" / "cut.png").write_bytes(good[: len(good) // 2])
    assert re.search(r"cut\.png: Pillow cannot open it", _error(root))


def test_differing_sizes_name_both_files(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "r", digits, per_class=2)
    _save(np.pad(digits["zero"][0], ((0, 4), (2, 2))), root / "zero" / "big.png")
    msg = _error(root)
    assert str(root / "one" / "000.png") in msg and "is 28x28" in msg
    assert str(root / "zero" / "big.png") in msg and "is 32x32" in msg and "resize" in msg


def test_bad_arguments(tmp_path: Path, digits) -> None:
    root = _make_folder(tmp_path / "r", digits, per_class=1)
    with pytest.raises(ConfigError, match="mode='CMYK' is not supported"):
        load_image_folder(root, mode="CMYK")
    with pytest.raises(ConfigError, match=r"valid_pct=1\.0 is outside \[0, 1\)"):
        load_image_folder(root, valid_pct=1.0)
    with pytest.raises(ConfigError):
        ImageFolderDataset(root, mode="RGBA")
