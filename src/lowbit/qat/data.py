"""Training data for fine-tuning: the forms calibration accepts, split into training and held-out images.

The held-out images come out of the training data (never a test split) and choose the epoch kept. Every order
is drawn from the run's seed and the epoch number alone, so a resumed run sees exactly the batches the
interrupted one would have seen next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset
from torch.utils.data.dataloader import default_collate

from lowbit.errors import LowbitError
from lowbit.qat.options import FinetuneOptions

Batch = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class TrainingData:
    """A map-style dataset and which of its items train and which are held out."""

    dataset: Dataset
    labelled: bool
    train: torch.Tensor
    held_out: torch.Tensor
    collate: Callable[[list], Any] = default_collate

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.train) / batch_size)

    def epoch_batches(self, epoch: int, batch_size: int, seed: int, skip: int = 0) -> Iterator[Batch]:
        """The training batches of ``epoch`` (0-based) in its seeded order, leaving out the first ``skip``."""
        order = self.train[torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed + 1 + epoch))]
        return self._batches(order[skip * batch_size:], batch_size)

    def held_out_batches(self, batch_size: int) -> Iterator[Batch]:
        return self._batches(self.held_out, batch_size)

    def _batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        if isinstance(self.dataset, TensorDataset):  # whole batches by indexing, without a per-item collate
            for idx in indices.split(batch_size):
                tensors = [t[idx] for t in self.dataset.tensors]
                yield _as_batch(tensors, self.labelled)
            return
        loader = DataLoader(Subset(self.dataset, indices.tolist()), batch_size=batch_size, collate_fn=self.collate)
        for item in loader:
            yield _as_batch(item, self.labelled)


def _as_batch(item: Any, labelled: bool) -> Batch:
    if isinstance(item, (tuple, list)):
        return item[0], (torch.as_tensor(item[1]) if labelled else None)
    return item, None


def _is_labelled(dataset: Dataset) -> bool:
    first = dataset[0]
    return isinstance(first, (tuple, list)) and len(first) >= 2


def _materialize(data: Any) -> TensorDataset:
    """An iterable of input batches or ``(input, label)`` batches gathered into tensors."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    for item in data:
        x, y = _as_batch(item, isinstance(item, (tuple, list)) and len(item) >= 2)
        xs.append(x)
        if y is not None:
            ys.append(y)
    if not xs:
        raise LowbitError("the training data is empty; pass a dataset or batches of (input, label) pairs")
    if ys and len(ys) != len(xs):
        raise LowbitError("some training batches have labels and some do not; pass all labelled or all inputs")
    return TensorDataset(torch.cat(xs), torch.cat(ys)) if ys else TensorDataset(torch.cat(xs))


def as_dataset(data: Any) -> tuple[Dataset, Callable[[list], Any]]:
    """A map-style dataset (and how to batch it) from the forms calibration data takes."""
    if isinstance(data, str):
        from lowbit.data.registry import load_dataset
        data, _ = load_dataset(data, "train")
    if isinstance(data, torch.Tensor):
        return TensorDataset(data), default_collate
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return TensorDataset(*data), default_collate
    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset) or not hasattr(data.dataset, "__len__"):
            return _materialize(data), default_collate
        return data.dataset, data.collate_fn
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__"):
        return data, default_collate
    if hasattr(data, "__iter__"):
        return _materialize(data), default_collate
    raise LowbitError(f"cannot train on {type(data).__name__}; pass a Dataset or DataLoader of (input, label) pairs, "
                      "or input tensors for distillation")


def split(data: Any, options: FinetuneOptions) -> TrainingData:
    """Hold out ``val_images`` (or ``val_fraction``) of the training data, then keep ``data_percentage`` of the rest."""
    dataset, collate = as_dataset(data)
    n = len(dataset)  # type: ignore[arg-type]
    if n < 2:
        raise LowbitError(f"the training data holds {n} image(s); fine-tuning needs at least two (one is held out)")
    n_val = options.val_images if options.val_images is not None else max(1, round(options.val_fraction * n))
    if n_val >= n:
        raise LowbitError(f"val_images={n_val} leaves no training image out of {n}; hold out fewer images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(options.seed))
    rest = order[n_val:]
    n_train = max(1, round(options.data_percentage * len(rest)))
    result = TrainingData(dataset, _is_labelled(dataset), rest[:n_train], order[:n_val], collate)
    _check_first_batch(result)
    return result


def _check_first_batch(data: TrainingData) -> None:
    x, y = next(data.held_out_batches(2))
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise LowbitError(f"training inputs must be float tensors normalized like the training data, found "
                          f"{getattr(x, 'dtype', type(x).__name__)}; convert them")
    if y is not None and (y.is_floating_point() or y.dim() != 1):
        raise LowbitError(f"labels must be class indices (one integer per image), found {y.dtype} of shape "
                          f"{tuple(y.shape)}; pass integer labels, or inputs alone for distillation")
