"""CIFAR-10 in its python format (``cifar-10-batches-py``), read with a restricted unpickler."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lowbit.errors import LowbitError

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
FOLDER = "cifar-10-batches-py"
# The batches are pickles of numpy arrays and lists; nothing else may be constructed while reading them.
ALLOWED_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
ALLOWED_GLOBALS |= {("numpy", "ndarray"), ("numpy", "dtype")}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise LowbitError(f"CIFAR-10 file refers to {module}.{name}, which a data file never needs; "
                          "re-download the dataset from its official source")


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise LowbitError(f"cannot read CIFAR-10 file {path} ({exc}); re-download the dataset") from None


def _images_and_labels(batch: object, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images as (N, 3, 32, 32) uint8 and labels as int64 in 0-9, or a one-line error naming what is
    wrong: a damaged batch must not become garbage images or labels a model cannot have."""
    fix = "re-download the dataset from its official source"
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise LowbitError(f"{path} is not a CIFAR-10 batch (no data and labels entries); {fix}")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise LowbitError(f"{path} holds data of shape {shape} and type {getattr(data, 'dtype', type(data).__name__)}"
                          f"; CIFAR-10 batches hold uint8 rows of 3072 pixels; {fix}")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise LowbitError(f"{path} has labels that are not integers; {fix}") from None
    if len(labels) != len(data):
        raise LowbitError(f"{path} has {len(data)} images but {len(labels)} labels; {fix}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise LowbitError(f"{path} has labels from {labels.min()} to {labels.max()}; CIFAR-10 labels are 0-9; {fix}")
    return data.reshape(-1, 3, 32, 32), labels


def find_cifar10(data_dir: str | Path | None) -> Path:
    candidates = [Path(d) / FOLDER for d in (data_dir, os.environ.get("LOWBIT_DATA")) if d]
    candidates += [Path(d) for d in (data_dir,) if d]
    for c in candidates:
        if (c / "test_batch").is_file():
            return c
    where = f"in {', '.join(map(str, candidates))}" if candidates else "(no --data-dir given and LOWBIT_DATA unset)"
    raise LowbitError(f"CIFAR-10 ({FOLDER}) not found {where}; download the python version and pass --data-dir")


def load_cifar10(split: Literal["train", "test"], data_dir: str | Path | None = None) -> tuple[TensorDataset, tuple[str, ...]]:
    """Images normalized with the CIFAR-10 mean/std, shape (N, 3, 32, 32), and the class names."""
    root = find_cifar10(data_dir)
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    xs, ys = [], []
    for name in names:
        x, y = _images_and_labels(_read(root / name), root / name)
        xs.append(x)
        ys.append(y)
    meta = root / "batches.meta"
    classes = tuple(n.decode() for n in _read(meta)[b"label_names"]) if meta.is_file() else tuple(map(str, range(10)))
    x = torch.from_numpy(np.concatenate(xs)).float().div_(255)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return TensorDataset(x, torch.from_numpy(np.concatenate(ys))), classes
