"""Classification metrics (top-1/5, macro precision/recall/F1, per class) and SQNR."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from lowbit.device import model_device
from lowbit.errors import LowbitError
from lowbit.model_mode import evaluating


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall and F1 of one class (a class never predicted has precision 0)."""

    index: int
    name: str | None
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Metrics:
    """Whole-dataset metrics; precision, recall and F1 are macro averages over classes present in the labels."""

    top1: float
    top5: float
    precision: float
    recall: float
    f1: float
    n: int
    per_class: tuple[ClassMetrics, ...]
    confusion: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "top5": self.top5, "precision": self.precision, "recall": self.recall,
                "f1": self.f1, "n": self.n, "per_class": [vars(c) for c in self.per_class]}


def metrics_from_confusion(confusion: torch.Tensor, top5_correct: int,
                           class_names: Sequence[str] | None = None) -> Metrics:
    """Metrics from a (true x predicted) confusion matrix and the count of top-5 hits."""
    confusion = confusion.to(torch.int64)
    n = int(confusion.sum())
    tp = confusion.diag().double()
    predicted = confusion.sum(0).double()
    support = confusion.sum(1).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), torch.zeros_like(tp))
    present = support > 0
    per_class = tuple(
        ClassMetrics(i, class_names[i] if class_names and i < len(class_names) else None, float(precision[i]),
                     float(recall[i]), float(f1[i]), int(support[i])) for i in range(confusion.shape[0]))

    def macro(t: torch.Tensor) -> float:
        return float(t[present].mean()) if present.any() else 0.0

    return Metrics(top1=float(tp.sum()) / max(n, 1), top5=top5_correct / max(n, 1), precision=macro(precision),
                   recall=macro(recall), f1=macro(f1), n=n, per_class=per_class, confusion=confusion)


def accumulate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_classes: int | None = None,
               class_names: Sequence[str] | None = None, device: str | torch.device | None = None,
               progress: bool = False) -> Metrics:
    """Run ``model`` over ``(x, y)`` batches and compute :class:`Metrics` (the model's mode is restored)."""
    device = torch.device(device) if device is not None else model_device(model)
    confusion: torch.Tensor | None = None
    top5 = 0
    with evaluating(model), torch.inference_mode():
        for x, y in tqdm(batches, desc="evaluating", disable=not progress, leave=False):
            logits = model(x.to(device)).float().cpu()
            if not bool(torch.isfinite(logits).all()):
                raise LowbitError("the model produced NaN or infinite outputs, so no metric would mean anything; "
                                  "check the model file and the input data (scale, dtype)")
            y = y.cpu().long()
            k = num_classes or logits.shape[1]
            if confusion is None:
                confusion = torch.zeros(k, k, dtype=torch.int64)
            pred = logits.argmax(1)
            confusion += torch.bincount(y * k + pred, minlength=k * k).reshape(k, k)
            topk = logits.topk(min(5, logits.shape[1]), dim=1).indices
            top5 += int((topk == y[:, None]).any(1).sum())
    if confusion is None:
        confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.int64)
    return metrics_from_confusion(confusion, top5, class_names)


def evaluate(model: nn.Module, data: Any, *, num_classes: int | None = None,
             class_names: Sequence[str] | None = None, batch_size: int = 256,
             device: str | torch.device | None = None, progress: bool = False) -> Metrics:
    """Top-1, top-5 and macro precision/recall/F1 of ``model`` over a labelled dataset.

    ``data``: a Dataset of ``(x, y)``, a DataLoader or iterable of ``(x, y)`` batches, or ``(inputs, labels)``.
    """
    from lowbit.data import labelled_batches

    return accumulate(model, labelled_batches(data, batch_size), num_classes, class_names, device, progress)


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(sum(ref^2) / sum((ref - test)^2))``."""
    ref = reference.detach().double()
    noise = (ref - test.detach().double()).pow(2).sum()
    signal = ref.pow(2).sum()
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return float(10 * torch.log10(signal / noise))
