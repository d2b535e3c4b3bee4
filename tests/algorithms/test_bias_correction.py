import torch

import lowbit
from lowbit.algorithms.bias_correction import mean_weight_error_output
from lowbit.graph import activation_quantizers
from lowbit.layers import quant_layers


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


def test_bias_correction_reaches_a_decoders_transposed_convolutions():
    """A codec's synthesis transform is made of transposed convolutions: their rounding shift is removed too."""
    torch.manual_seed(0)
    decoder = torch.nn.Sequential(torch.nn.ConvTranspose2d(6, 8, 5, stride=2, padding=2, output_padding=1),
                                  torch.nn.ReLU(), torch.nn.ConvTranspose2d(8, 3, 5, stride=2, padding=2,
                                                                            output_padding=1)).eval()
    x = torch.randn(32, 6, 6, 6) + 0.5
    before = lowbit.quantize(decoder, x, weights_bits=3, activation_bits=None, bias_correction=False)
    after = lowbit.quantize(decoder, x, weights_bits=3, activation_bits=None, bias_correction=True)
    with torch.no_grad():
        shift = [(q(x) - decoder(x)).mean((0, 2, 3)).abs().mean().item() for q in (before, after)]
    assert shift[1] < 0.3 * shift[0]


def test_mean_error_output_equals_the_mean_of_the_full_output():
    """The shift is computed on the batch-mean input; it must equal the mean over every output position."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
    conv1d = torch.nn.Conv1d(3, 4, 3, padding=1)
    transposed = torch.nn.ConvTranspose2d(3, 4, 5, stride=2, padding=2, output_padding=1)
    linear = torch.nn.Linear(6, 5)
    cases = ((conv, torch.randn(4, 3, 9, 9), (0, 2, 3)), (conv1d, torch.randn(4, 3, 10), (0, 2)),
             (transposed, torch.randn(4, 3, 5, 5), (0, 2, 3)), (linear, torch.randn(4, 7, 6), (0, 1)))
    for float_layer, x, dims in cases:
        q = lowbit.quantize(torch.nn.Sequential(float_layer), x, weights_bits=3, activation_bits=None,
                            bias_correction=False)
        (_, layer), = quant_layers(q)
        layer.unfreeze()
        layer.weight.data = float_layer.weight.detach().clone()  # the float weight, so W_q - W is not zero
        delta = (layer.fake_quant_weight() - layer.weight).detach()
        if isinstance(layer, torch.nn.ConvTranspose2d):
            full = torch.nn.functional.conv_transpose2d(x, delta, None, 2, 2, 1)
        else:
            full = layer._conv_forward(x, delta, None) if hasattr(layer, "_conv_forward") else x @ delta.T
        assert full.mean(dims).abs().max() > 1e-3
        torch.testing.assert_close(mean_weight_error_output(layer, x), full.mean(dims), rtol=1e-4, atol=1e-6)
