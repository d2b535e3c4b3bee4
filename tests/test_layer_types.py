"""Conv1d and ConvTranspose2d (a codec's decoder, an audio front end) are quantized like Conv2d and Linear:
per output channel, saved and reloaded exactly, optimized by learned rounding, and exported to ONNX."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.coverage import coverage
from lowbit.deploy.runtime import session_options
from lowbit.layers import QConv1d, QConvTranspose2d, quant_layers


class Decoder(nn.Module):
    """Encoder conv, a 1-d conv over the flattened rows, and two transposed convolutions back up."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.mix = nn.Conv1d(12, 12, 3, padding=1)
        self.up1 = nn.ConvTranspose2d(12, 8, 5, stride=2, padding=2, output_padding=1)
        self.act = nn.ReLU()
        self.up2 = nn.ConvTranspose2d(8, 3, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        n, c, h, w = y.shape
        y = self.mix(y.reshape(n, c, h * w)).reshape(n, c, h, w)
        return self.up2(self.act(self.up1(y)))


@pytest.fixture
def decoder():
    torch.manual_seed(0)
    with torch.no_grad():
        model = Decoder().eval()
        model.up1.weight[:, 0] *= 20  # one output channel with far larger weights: a per-tensor grid would crush the rest
    return model


def test_every_layer_is_quantized_with_a_grid_per_output_channel(decoder, images, tmp_path):
    q = lowbit.quantize(decoder, images, weights_bits=4, activation_bits=8)
    layers = dict(quant_layers(q))
    assert isinstance(layers["mix"], QConv1d) and isinstance(layers["up1"], QConvTranspose2d)
    assert layers["up1"].weight_quant.scale.numel() == 8 and layers["up1"].weight_quant.spec.axis == 1
    assert coverage(q).unquantized == {}
    # the big channel does not set the step of the others: their weights keep most of their 4-bit precision
    w, qw = decoder.up1.weight[:, 1:], layers["up1"].weight[:, 1:]
    assert ((w - qw).norm() / w.norm()) < 0.15
    reloaded = lowbit.load(lowbit.save(q, tmp_path / "d.lowbit"), model=Decoder())
    with torch.no_grad():
        assert torch.equal(q(images), reloaded(images))


def test_learned_rounding_optimizes_transposed_convolutions(decoder, images):
    nearest = lowbit.quantize(decoder, images, weights_bits=3, activation_bits=8)
    learned = lowbit.quantize(decoder, images, weights_bits=3, activation_bits=8, method="adaround", iters=200)
    with torch.no_grad():
        ref = decoder(images)
        err = [(m(images) - ref).pow(2).mean().item() for m in (nearest, learned)]
    assert err[1] < err[0]
    changed = [name for (name, a), (_, b) in zip(quant_layers(nearest), quant_layers(learned))
               if not torch.equal(a.qweight, b.qweight)]
    assert "up1" in changed and "mix" in changed


def test_onnx_export_runs_the_same_model(decoder, images, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    q = lowbit.quantize(decoder, images, weights_bits=8, activation_bits=8)
    report = lowbit.export(q, tmp_path / "d.onnx", images[:2])
    assert any("ConvTranspose2d" in line for line in report.float_compute)
    session = ort.InferenceSession(str(report.path), session_options(), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": images[:8].numpy()})[0])
    with torch.no_grad():
        want = q(images[:8])
    step = q.get_submodule("act_quant.up2").scale.item()
    assert (got - want).abs().max() <= 2.01 * step  # float sums in another order: at most a step or two apart
    assert (got - want).abs().mean() < 0.05 * step  # and only a few elements differ at all
