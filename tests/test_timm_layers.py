"""timm's Conv2dSame and Linear quantized as the torch layers they compute, through export and reload."""

import torch
from timm.layers import Conv2dSame, Linear
from torch import nn

import lowbit
from lowbit.coverage import coverage
from lowbit.deploy import export
from lowbit.deploy.runtime import OnnxClassifier, optimized_op_counts
from lowbit.timm_layers import QConv2dSame


class SamePadded(nn.Module):
    """TensorFlow "same" padding on strided convolutions, as timm's tf_ EfficientNets build them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 8, 3, stride=2)
        self.down = Conv2dSame(8, 8, 5, stride=2, groups=8)
        self.head = Linear(8, 5)

    def forward(self, x):
        return self.head(torch.relu(self.down(torch.relu(self.stem(x)))).mean((2, 3)))


def test_same_padded_convolutions_are_quantized_exported_and_reloaded(tmp_path):
    torch.manual_seed(0)
    model, x = SamePadded().eval(), torch.rand(16, 3, 15, 15)  # odd sizes: uneven padding
    qmodel = lowbit.quantize(model, x, weights_bits=8, activation_bits=8)
    assert isinstance(qmodel.stem, QConv2dSame) and coverage(qmodel).unquantized == {}
    with torch.no_grad():
        ours, float_out = qmodel(x), model(x)
    assert ours.shape == float_out.shape
    assert (ours - float_out).abs().max() < 0.05 * float_out.abs().max()
    lowbit.save(qmodel, tmp_path / "m.lowbit")
    with torch.no_grad():
        assert torch.equal(lowbit.load(str(tmp_path / "m.lowbit"), SamePadded().eval())(x), ours)
    path = export(qmodel, tmp_path / "m.onnx", x[:2]).path
    counts = optimized_op_counts(path)
    assert counts["QLinearConv"] == 2 and counts["Conv"] == 0, counts
    assert (OnnxClassifier(path)(x) - ours).abs().max() < 0.05 * ours.abs().max()


def test_weight_operation_pads_as_the_layer_does():
    """Bias correction measures a layer's rounding error through its weight operation: same padding included."""
    torch.manual_seed(0)
    conv, x = Conv2dSame(3, 4, 4, stride=2, bias=False), torch.rand(2, 3, 9, 9)
    quantized = QConv2dSame.from_float(conv, lowbit.QuantSpec(bits=8))
    weight = torch.randn_like(conv.weight)
    with torch.no_grad():
        conv.weight.copy_(weight)
        torch.testing.assert_close(quantized.weight_op(x, weight), conv(x))
