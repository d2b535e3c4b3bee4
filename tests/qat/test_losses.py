"""Training objectives: what each distillation loss asks of the student, and which loss a batch is trained on."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.qat import FinetuneOptions
from lowbit.qat.losses import agreement, distillation_loss, objective


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(16, 10, generator=torch.Generator().manual_seed(seed)) * 3


def test_mse_matches_the_logits_themselves_and_kl_only_their_softmax():
    teacher = _logits(0)
    shifted = teacher + 5.0  # same softmax, different logits
    kl, mse = FinetuneOptions(distill_loss="kl"), FinetuneOptions(distill_loss="mse")
    assert float(distillation_loss(shifted, teacher, kl)) < 1e-5
    assert float(distillation_loss(shifted, teacher, mse)) > 24.0  # 5 squared, less rounding
    assert float(distillation_loss(teacher, teacher, mse)) == 0.0
    student = _logits(1)
    assert torch.isclose(distillation_loss(student, teacher, mse), ((student - teacher) ** 2).mean())


def test_kl_at_a_temperature_keeps_the_gradient_size():
    """Scaled by T^2, the soft loss's gradient stays of the same order when the temperature rises (Hinton et al.)."""
    teacher = _logits(0)
    sizes = []
    for t in (1.0, 4.0):
        student = _logits(1).requires_grad_(True)
        distillation_loss(student, teacher, FinetuneOptions(distill_loss="kl", temperature=t)).backward()
        sizes.append(float(student.grad.norm()))
    assert 0.2 < sizes[1] / sizes[0] < 5.0


def test_objective_is_distillation_with_a_teacher_and_cross_entropy_without():
    student, teacher, labels = _logits(1), _logits(0), torch.arange(16) % 10
    options = FinetuneOptions(distill_loss="mse")
    assert torch.equal(objective(student, labels, teacher, options), distillation_loss(student, teacher, options))
    assert torch.isclose(objective(student, labels, None, options), F.cross_entropy(student, labels))


def test_agreement_counts_top1_against_labels_or_teacher_logits():
    student, teacher = _logits(1), _logits(0)
    assert agreement(student, student) == 16
    assert agreement(student, teacher.argmax(1)) == agreement(student, teacher)
