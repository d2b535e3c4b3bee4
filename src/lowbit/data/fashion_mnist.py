"""Fashion-MNIST from its IDX files (Zalando Research, 60k train / 10k test, 28x28 grey)."""

from __future__ import annotations

import gzip
import logging
import os
import struct
import urllib.request
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lowbit.io.atomic import atomic_path
from lowbit.errors import LowbitError

log = logging.getLogger(__name__)

MEAN = (0.2860,)
STD = (0.3530,)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as exc:
        raise LowbitError(f"cannot read IDX file {path} ({exc}); delete it and re-download, "
                          "or reinstall the dataset-fashion-mnist package") from None


def candidate_dirs(data_dir: str | Path | None) -> list[Path]:
    """Where the files are looked for, in order: the argument, $LOWBIT_DATA, the Debian package."""
    dirs = []
    for d in (data_dir, os.environ.get("LOWBIT_DATA")):
        if d:
            dirs += [Path(d), Path(d) / "fashion-mnist"]
    return dirs + [SYSTEM_DIR]


def _find(data_dir: str | Path | None, names: tuple[str, str]) -> Path | None:
    for d in candidate_dirs(data_dir):
        if all((d / n).is_file() for n in names):
            return d
    return None


def _download(target: Path, names: tuple[str, str]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        log.info("downloading %s%s", OFFICIAL_URL, name)
        with atomic_path(target / name) as tmp:
            urllib.request.urlretrieve(OFFICIAL_URL + name, tmp)


def load_fashion_mnist(split: Literal["train", "test"], data_dir: str | Path | None = None,
                       download: bool = True) -> TensorDataset:
    """Return ``(images, labels)`` with images normalized to ``(x/255 - MEAN) / STD``, shape (N, 1, 28, 28)."""
    names = _FILES[split]
    found = _find(data_dir, names)
    if found is None and download:
        target = Path(data_dir or os.environ.get("LOWBIT_DATA") or Path.home() / ".cache" / "lowbit") / "fashion-mnist"
        try:
            _download(target, names)
            found = target
        except OSError as exc:
            log.debug("download failed: %s", exc)
    if found is None:
        raise LowbitError("Fashion-MNIST not found (looked in " + ", ".join(map(str, candidate_dirs(data_dir)))
                          + "); install it with `apt-get install dataset-fashion-mnist` or pass --data-dir")
    images = read_idx(found / names[0])
    labels = read_idx(found / names[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise LowbitError(f"Fashion-MNIST files in {found} are inconsistent; re-download them")
    x = torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)
    x = (x - MEAN[0]) / STD[0]
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))
