"""Datasets for convscope: MNIST-style IDX files (found locally or downloaded and verified) and users'
own image folders.

`load_dataset("mnist")` and `load_image_folder(path)` both return an `ImageData` (train/test uint8 image
tensors, int64 labels, class names); MNIST images are `[N, 28, 28]`, folder images `[N, C, H, W]`.
"""

from convscope.data.folders import IMAGE_EXTENSIONS, FolderData, ImageFolderDataset, load_image_folder
from convscope.data.idx import read_idx, read_mnist_pair
from convscope.data.sources import (
    DATASETS,
    DatasetFile,
    DatasetSpec,
    ImageData,
    MnistData,
    cache_dir,
    download_dataset,
    find_dataset,
    load_dataset,
)

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "DatasetFile",
    "DatasetSpec",
    "FolderData",
    "ImageData",
    "ImageFolderDataset",
    "MnistData",
    "cache_dir",
    "download_dataset",
    "find_dataset",
    "load_dataset",
    "load_image_folder",
    "read_idx",
    "read_mnist_pair",
]
