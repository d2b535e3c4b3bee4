"""Weight-standardized convolutions (BiT's StdConv2d, NFNet's ScaledStdConv2d) folded into plain, quantized ones."""

import copy

import torch
from timm.layers import ScaledStdConv2d, StdConv2d, StdConv2dSame
from torch import nn

import lowbit
from lowbit.coverage import coverage
from lowbit.weight_standardization import fold_weight_standardization


class Standardized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = StdConv2d(3, 8, 3, padding=1)
        self.body = ScaledStdConv2d(8, 8, 3, padding=1, bias=False)
        self.head = nn.Linear(8, 5)
        with torch.no_grad():
            self.body.gain.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.head(torch.relu(self.body(torch.relu(self.stem(x)))).mean((2, 3)))


def test_folded_convolutions_compute_what_the_standardized_ones_do():
    torch.manual_seed(0)
    model, x = Standardized().eval(), torch.rand(4, 3, 8, 8)
    folded = copy.deepcopy(model)
    assert fold_weight_standardization(folded) == 2
    assert type(folded.stem) is nn.Conv2d and type(folded.body) is nn.Conv2d and folded.body.bias is None
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-5)


def test_same_padding_by_input_size_is_left_alone():
    model = nn.Sequential(StdConv2dSame(3, 8, 3, stride=2, padding="same"))
    assert fold_weight_standardization(model) == 0 and type(model[0]) is StdConv2dSame


def test_standardized_convolutions_are_quantized_and_reload(tmp_path):
    torch.manual_seed(0)
    model, x = Standardized().eval(), torch.rand(16, 3, 8, 8)
    qmodel = lowbit.quantize(model, x, weights_bits=8, activation_bits=8)
    assert coverage(qmodel).unquantized == {}
    with torch.no_grad():
        ours = qmodel(x)
        assert (ours - model(x)).abs().max() < 0.05 * model(x).abs().max()
    lowbit.save(qmodel, tmp_path / "m.lowbit")
    with torch.no_grad():
        assert torch.equal(lowbit.load(str(tmp_path / "m.lowbit"), Standardized().eval())(x), ours)
