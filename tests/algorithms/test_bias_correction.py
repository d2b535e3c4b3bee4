import torch

import lowbit
from lowbit.graph import activation_quantizers


def _channel_mean_error(model, q, x):
    with torch.no_grad():
        return (q(x) - model(x)).mean(0).abs().mean().item()


def test_bias_correction_removes_mean_output_shift(residual_net, images):
    before = lowbit.quantize(residual_net, images, weights_bits=2, activation_bits=None, bias_correction=False)
    after = lowbit.quantize(residual_net, images, weights_bits=2, activation_bits=None, bias_correction=True)
    assert _channel_mean_error(residual_net, after, images) < 0.7 * _channel_mean_error(residual_net, before, images)


def test_bias_correction_is_recorded_and_survives_reload(residual_net, images, tmp_path):
    q = lowbit.quantize(residual_net, images, weights_bits=3, activation_bits=8)
    assert q.lowbit_info.config.bias_correction
    r = lowbit.load(lowbit.save(q, tmp_path / "m.lowbit"), model=type(residual_net)())
    with torch.no_grad():
        assert torch.equal(q(images), r(images))
    assert activation_quantizers(r)
