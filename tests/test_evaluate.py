import math

import pytest

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.evaluate import accumulate, evaluate, metrics_from_confusion, sqnr_db


class FixedLogits(nn.Module):
    """Returns preset logits for the i-th sample (inputs are indices)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits[idx.long()]


def test_hand_computed_three_classes():
    # true:      0 0 0 1 1 2
    # predicted: 0 0 1 1 2 2
    confusion = torch.tensor([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    m = metrics_from_confusion(confusion, top5_correct=6, class_names=["a", "b", "c"])
    assert math.isclose(m.top1, 4 / 6)
    precision = [1.0, 0.5, 0.5]
    recall = [2 / 3, 0.5, 1.0]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert math.isclose(m.precision, sum(precision) / 3)
    assert math.isclose(m.recall, sum(recall) / 3)
    assert math.isclose(m.f1, sum(f1) / 3)
    assert m.per_class[0].name == "a" and m.per_class[0].support == 3


def test_never_predicted_class_has_zero_precision_and_absent_class_is_excluded():
    confusion = torch.tensor([[3, 0, 0], [2, 0, 0], [0, 0, 0]])
    m = metrics_from_confusion(confusion, 5)
    assert m.per_class[1].precision == 0 and m.per_class[1].f1 == 0
    assert math.isclose(m.recall, (1.0 + 0.0) / 2)  # class 2 has no support


def test_top5_and_model_mode_restored():
    logits = torch.eye(8)[torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])] * torch.arange(8.0)
    logits[:, 7] += 0.5  # class 7 always in the top few
    model = FixedLogits(logits).train()
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    m = accumulate(model, [(torch.arange(8), labels)])
    assert model.training
    assert m.n == 8 and m.top5 >= m.top1 and m.top1 < 1.0


def test_evaluate_perfect_model_on_tensor_pairs():
    labels = torch.randint(0, 4, (50,))
    logits = torch.nn.functional.one_hot(labels, 4).float()
    m = evaluate(FixedLogits(logits), (torch.arange(50), labels), batch_size=16)
    assert m.top1 == m.precision == m.recall == m.f1 == 1.0
    assert m.to_dict()["n"] == 50


def test_sqnr():
    ref = torch.ones(100)
    assert math.isclose(sqnr_db(ref, ref * 1.1), 20.0, rel_tol=1e-6)
    assert sqnr_db(ref, ref) == math.inf


def test_nan_outputs_are_an_error_not_a_score():
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.bias[1] = float("nan")
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with pytest.raises(LowbitError, match="NaN or infinite outputs"):
        evaluate(model, (x, y))
