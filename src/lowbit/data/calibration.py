"""Normalize whatever a user passes as data into batches: unlabeled inputs for calibration,
``(input, label)`` pairs for evaluation."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lowbit.errors import LowbitError


def _first_tensor(item: Any) -> Any:
    return item[0] if isinstance(item, (tuple, list)) else item


def _check_batch(x: Any, index: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise LowbitError(f"calibration data must be tensors or (tensor, label) pairs, found {type(x).__name__} "
                          f"(batch {index}); convert the inputs to torch tensors")
    if not x.is_floating_point():
        raise LowbitError(f"calibration inputs have dtype {x.dtype} (batch {index}); pass float inputs normalized "
                          "like the training data")
    if not torch.isfinite(x).all():
        raise LowbitError(f"calibration data contains NaN or Inf (batch {index}); clean or re-normalize the inputs")
    return x


def _subset_of_dataset(ds: Dataset, n_images: int, seed: int) -> torch.Tensor:
    n = min(n_images, len(ds))  # type: ignore[arg-type]
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]  # type: ignore[arg-type]
    if isinstance(ds, TensorDataset):
        return ds.tensors[0][idx]
    items = [_first_tensor(ds[int(i)]) for i in idx]
    for i, x in enumerate(items):
        _check_batch(x, i)
    return torch.stack(items) if items else torch.empty(0)


def _from_iterable(data: Any, n_images: int) -> torch.Tensor:
    taken, count = [], 0
    for i, item in enumerate(data):
        x = _check_batch(_first_tensor(item), i)
        if x.dim() == 0:
            raise LowbitError(f"calibration batch {i} is a scalar; pass input batches shaped (N, ...)")
        taken.append(x[: n_images - count])
        count += len(taken[-1])
        if count >= n_images:
            break
    return torch.cat(taken) if taken else torch.empty(0)


def calibration_batches(data: Any, n_images: int = 1024, batch_size: int = 64, seed: int = 0) -> list[torch.Tensor]:
    """Up to ``n_images`` calibration inputs from ``data``, as a list of batches (labels dropped).

    ``data``: a tensor (first rows taken), a map-style Dataset (seeded random subset), a DataLoader or any
    iterable of tensors or ``(x, y)`` pairs (consumed in order), or a dataset name (its training split).
    """
    if n_images < 1 or batch_size < 1:
        raise LowbitError(f"need at least one calibration image and a positive batch size, got {n_images} / {batch_size}")
    if isinstance(data, str):
        from lowbit.data.registry import load_dataset
        data, _ = load_dataset(data, "train")
    if isinstance(data, torch.Tensor):
        x = _check_batch(data, 0)[:n_images]
    elif isinstance(data, Dataset) and hasattr(data, "__len__") and not isinstance(data, DataLoader):
        x = _subset_of_dataset(data, n_images, seed)
    else:
        x = _from_iterable(data, n_images)
    if x.numel() == 0:
        raise LowbitError("calibration data is empty; pass at least one input batch")
    _check_batch(x, 0)
    return list(x.float().split(batch_size))  # models are calibrated in float32 (see lowbit.dtypes)


def labelled_batches(data: Any, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches over a whole labelled dataset, in order."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        data = TensorDataset(*data)
    if isinstance(data, TensorDataset):
        if len(data.tensors) < 2:
            raise LowbitError("evaluation needs (input, label) pairs; the dataset has inputs only")
        x, y = data.tensors[0], data.tensors[1]
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]
        return
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size)
    for item in data:
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise LowbitError("evaluation needs (input, label) pairs; pass a labelled dataset or (inputs, labels)")
        yield item[0], torch.as_tensor(item[1])
