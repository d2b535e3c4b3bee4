import pytest
import torch
from torch import nn

from lowbit import input_patches
from lowbit.config import QuantConfig
from lowbit.graph import prepare
from lowbit.input_patches import input_covariances, supports_covariance
from lowbit.layers import quant_layers


def _prepared(float_layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    q = prepare(nn.Sequential(float_layer), QuantConfig.from_bits(4, None))
    (_, layer), = quant_layers(q)
    return q, layer


@pytest.mark.parametrize("form", ["matrix", "factor"])
@pytest.mark.parametrize("make, shape", [
    (lambda: nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2), (5, 6, 9, 9)),
    (lambda: nn.Conv2d(5, 5, 3, padding=1, groups=5), (5, 5, 8, 8)),  # depthwise: one matrix per channel
    (lambda: nn.Conv1d(4, 3, 3, padding=2, dilation=2), (5, 4, 11)),
    (lambda: nn.Linear(7, 3), (5, 6, 7)),
    (lambda: nn.ConvTranspose2d(4, 3, 5, stride=2, padding=2, output_padding=1), (5, 4, 6, 7)),  # a decoder's
    (lambda: nn.ConvTranspose2d(3, 2, 3, stride=(1, 2), padding=(3, 0), dilation=2), (5, 3, 8, 6)),
])
def test_covariance_predicts_the_output_error_of_a_weight_change(make, shape, form, monkeypatch):
    """What the covariance is for: ``dw^T H dw`` is the variance, over every output position, of the output
    change a weight change ``dw`` causes, for each output channel; the same whether it is held as a matrix or,
    for long rows, as a factor (every patch kept here, so both are exact)."""
    monkeypatch.setattr(input_patches, "MATRIX_ROWS", 10**6)
    monkeypatch.setattr(input_patches, "FACTOR_ROWS", 10**6)
    monkeypatch.setattr(input_patches, "MATRIX_LIMIT", 10**6 if form == "matrix" else 0)
    torch.manual_seed(0)
    float_layer = make()
    x = torch.randn(shape) + torch.linspace(0, 2, shape[-1])  # a non-zero mean, which H must not count
    q, layer = _prepared(float_layer)
    cov = input_covariances(q, [x], list(quant_layers(q)))["0"]
    delta = torch.randn_like(float_layer.weight) * 0.1
    with torch.no_grad():
        out_change = _apply(float_layer, x, float_layer.weight + delta) - _apply(float_layer, x, float_layer.weight)
    per_channel = out_change.movedim(-1 if isinstance(float_layer, nn.Linear) else 1, 0)
    per_channel = per_channel.reshape(per_channel.shape[0], -1)
    assert (cov.matrix is not None) == (form == "matrix")
    rows = delta.movedim(1 if isinstance(float_layer, nn.ConvTranspose2d) else 0, 0)
    predicted = cov.quadratic(rows.reshape(rows.shape[0], -1))
    torch.testing.assert_close(predicted, per_channel.var(dim=1, unbiased=False), rtol=1e-3, atol=1e-6)


def _apply(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(x, weight, None)
    if isinstance(layer, nn.ConvTranspose2d):
        return nn.functional.conv_transpose2d(x, weight, None, layer.stride, layer.padding, layer.output_padding,
                                              layer.groups, layer.dilation)
    return layer._conv_forward(x, weight, None)


def test_large_inputs_are_sampled_to_a_bounded_number_of_patches(monkeypatch):
    monkeypatch.setattr(input_patches, "MATRIX_ROWS", 64)
    counts = []
    original = input_patches._Accumulator.covariance

    def spy(self):
        counts.append(self.count)
        return original(self)

    monkeypatch.setattr(input_patches._Accumulator, "covariance", spy)
    q, _ = _prepared(nn.Conv2d(3, 4, 3, padding=1))
    input_covariances(q, [torch.randn(16, 3, 20, 20)], list(quant_layers(q)))
    assert 0 < counts[0] <= 64


def test_grouped_transposed_convs_and_special_padding_get_no_covariance():
    assert not supports_covariance(_prepared(nn.ConvTranspose2d(4, 4, 3, groups=2))[1])
    assert supports_covariance(_prepared(nn.ConvTranspose2d(3, 4, 3))[1])
    assert not supports_covariance(_prepared(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))[1])
    assert not supports_covariance(_prepared(nn.Conv2d(3, 4, 3, padding="same"))[1])
    assert supports_covariance(_prepared(nn.Conv2d(3, 4, 3, padding=1))[1])
