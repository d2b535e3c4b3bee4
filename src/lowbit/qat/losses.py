"""Training objectives: cross-entropy with labels, distillation from a float teacher without them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.qat.options import FinetuneOptions


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, options: FinetuneOptions) -> torch.Tensor:
    """KL divergence from the teacher's softmax (scaled by T^2 so gradients keep their size at any temperature),
    or the mean squared error between logits."""
    if options.distill_loss == "mse":
        return F.mse_loss(student, teacher)
    t = options.temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                    reduction="batchmean") * t * t


def objective(student: torch.Tensor, labels: torch.Tensor | None, teacher: torch.Tensor | None,
              options: FinetuneOptions) -> torch.Tensor:
    """The loss one batch is trained on: distillation when a teacher output is given, else cross-entropy."""
    if teacher is not None:
        return distillation_loss(student, teacher, options)
    assert labels is not None
    return F.cross_entropy(student, labels)


def agreement(student: torch.Tensor, reference: torch.Tensor) -> int:
    """How many rows of ``student`` put their largest output where ``reference`` does (labels or teacher logits)."""
    target = reference.argmax(1) if reference.dim() > 1 else reference
    return int((student.argmax(1) == target).sum())
