import pytest
import torch
from torch import nn

import lowbit
from lowbit.algorithms.gain_correction import GainRounding, channel_gains, correct_gains
from lowbit.calibrate import calibrate_weights
from lowbit.config import QuantConfig
from lowbit.graph import prepare
from lowbit.layers import quant_layers


def _clipping_setup(transposed: bool = False) -> tuple[nn.Module, torch.Tensor]:
    """A conv (or a decoder's transposed conv) whose 2-bit output-aware ranges clip: heavy-tailed weights,
    correlated inputs."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.ConvTranspose2d(8, 16, 4, stride=2, padding=1) if transposed else nn.Conv2d(8, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) ** 3)
    x = nn.functional.avg_pool2d(torch.randn(48, 8, 12, 12, generator=gen), 3, stride=1, padding=1)
    return nn.Sequential(conv), x


def _gains(model: nn.Module, q: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per output channel, the regression slope of the quantized output on the float one (centred)."""
    with torch.no_grad():
        y, yq = model(x), q(x)
    y, yq = (t.movedim(1, 0).reshape(t.shape[1], -1) for t in (y, yq))
    y, yq = y - y.mean(1, keepdim=True), yq - yq.mean(1, keepdim=True)
    return (y * yq).sum(1) / (y * y).sum(1)


@pytest.mark.parametrize("transposed", [False, True])
def test_gain_correction_brings_each_channel_gain_back_to_one(transposed):
    model, x = _clipping_setup(transposed)
    fresh = nn.functional.avg_pool2d(torch.randn(48, 8, 12, 12, generator=torch.Generator().manual_seed(1)), 3,
                                     stride=1, padding=1)
    kw = dict(weights_bits=3, activation_bits=None, bias_correction=False)
    plain = _gains(model, lowbit.quantize(model, x, gain_correction=False, **kw), fresh)
    corrected = _gains(model, lowbit.quantize(model, x, **kw), fresh)
    assert plain.mean() < 0.97  # clipped ranges shrink the output
    assert (corrected - 1).abs().mean() < 0.5 * (plain - 1).abs().mean()


def test_corrected_layers_keep_the_codes_of_round_to_nearest():
    model, x = _clipping_setup()
    q = prepare(model, QuantConfig.from_bits(3, None))
    covariances = calibrate_weights(q, [x])
    (_, layer), = quant_layers(q)
    codes = layer.integer_weight().clone()
    gain = channel_gains(layer, covariances["0"])
    correct_gains(q, covariances)
    assert isinstance(layer.rounding, GainRounding) and (gain - 1).abs().max() > 1e-3
    assert torch.equal(layer.integer_weight(), codes)
    layer.freeze()
    assert torch.equal(layer.qweight, codes)


def test_gain_corrected_model_reloads_exactly(tmp_path):
    model, x = _clipping_setup()
    q = lowbit.quantize(model, x, weights_bits=4, activation_bits=8)
    assert q.lowbit_info.config.gain_correction
    r = lowbit.load(lowbit.save(q, tmp_path / "m.lowbit"), model=nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)))
    assert r.lowbit_info.config.gain_correction
    with torch.no_grad():
        assert torch.equal(q(x), r(x))
