"""A model PyTorch's ONNX exporter cannot take: one line naming the operation or the line of code, and quiet."""

import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.deploy import export


class Head(nn.Module):
    """A convolution and a classifier, with ``between`` applied to the feature map (or a value-dependent branch)."""

    def __init__(self, between=None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        self.between = between

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.between is not None:
            y = self.between(y)
        elif y.mean() > 0:  # a branch on a tensor's value
            y = torch.relu(y)
        return self.fc(y.mean((2, 3)))


def _export_error(model: nn.Module, tmp_path, capsys) -> str:
    images = torch.rand(8, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fx cannot trace the branch: lowbit falls back to module swapping
        qmodel = lowbit.quantize(model.eval(), images, weights_bits=8, activation_bits=8, calib_images=8)
    capsys.readouterr()
    with pytest.raises(lowbit.LowbitError) as info:
        export(qmodel, tmp_path / "m.onnx", images[:2])
    printed = capsys.readouterr()
    assert not printed.out and not printed.err, "the exporter's own dumps reached the terminal"
    assert not list(tmp_path.iterdir())
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "\x1b" not in message
    return message


def test_value_dependent_branch_is_named_by_its_line(tmp_path, capsys):
    message = _export_error(Head(), tmp_path, capsys)
    assert "branches on a tensor's value" in message and "if y.mean() > 0" in message, message
    assert f"{__file__}:" in message and "torch.where" in message


def test_operator_without_onnx_translation_is_named(tmp_path, capsys):
    message = _export_error(Head(lambda y: torch.cummax(y, 1)[0]), tmp_path, capsys)
    assert "operation aten.cummax has no ONNX translation" in message, message


def _five_d_attention(y):
    grouped = y.reshape(y.shape[0], 2, 2, 2, -1)  # (batch, groups, heads, tokens, features)
    # grouped-query heads keep the call fused (lowbit writes plain attention out as matmuls and softmax)
    return torch.nn.functional.scaled_dot_product_attention(grouped, grouped, grouped,
                                                            enable_gqa=True).reshape_as(y)


def test_operator_whose_translation_refuses_its_inputs_is_named(tmp_path, capsys):
    message = _export_error(Head(_five_d_attention), tmp_path, capsys)
    assert "could not translate operation aten.scaled_dot_product_attention" in message, message
    assert "4D" in message
