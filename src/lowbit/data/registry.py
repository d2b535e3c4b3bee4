"""Datasets by name."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from lowbit.data import cifar10, fashion_mnist
from lowbit.data.imagefolder import IMAGENET, Preprocessing, load_image_folder
from lowbit.data.info import DatasetInfo
from lowbit.errors import LowbitError

DATASET_NAMES: tuple[str, ...] = ("fashion-mnist", "cifar10", "imagefolder")


def load_dataset(name: str, split: Literal["train", "test"], *, data_dir: str | Path | None = None,
                 train_path: str | Path | None = None, val_path: str | Path | None = None,
                 image_size: int = 224, download: bool = True,
                 preprocessing: Preprocessing = IMAGENET) -> tuple[Dataset, DatasetInfo]:
    """A labelled split (``train`` for calibration, ``test`` for metrics) and its :class:`DatasetInfo`.

    ``preprocessing`` is the model's (image folders only: the fixed datasets have their own statistics)."""
    if name == "fashion-mnist":
        ds = fashion_mnist.load_fashion_mnist(split, data_dir, download)
        return ds, DatasetInfo(name, 10, (1, 28, 28), fashion_mnist.MEAN, fashion_mnist.STD, fashion_mnist.CLASSES)
    if name == "cifar10":
        ds, classes = cifar10.load_cifar10(split, data_dir)
        return ds, DatasetInfo(name, 10, (3, 32, 32), cifar10.MEAN, cifar10.STD, classes)
    if name == "imagefolder":
        if split == "train":
            return load_image_folder(train_path, image_size, "--train-data-path", preprocessing)
        return load_image_folder(val_path, image_size, "--val-data-path", preprocessing)
    raise LowbitError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
