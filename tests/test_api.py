import math

import pytest
import torch
from torch import nn

import lowbit
from conftest import ResidualNet, randomize_bn
from lowbit import LowbitError, QuantConfig
from lowbit.calibrate import calibrate
from lowbit.graph import activation_quantizers, layer_input_quantizers, prepare
from lowbit.layers import quant_layers


def sqnr_db(model, q, x) -> float:
    """Signal-to-quantization-noise ratio of ``q``'s output against ``model``'s, in decibels."""
    with torch.no_grad():
        ref, out = model(x), q(x)
    return 10 * math.log10(ref.pow(2).sum().item() / (out - ref).pow(2).sum().item())


def test_keyword_form_quantizes_as_asked(residual_net, images, device):
    """weights_bits=4, activation_bits=8, weights_observer="minmax": every layer gets a signed per-channel 4-bit grid
    whose step is its row's max |w| / 7.5 (the grid [-8, 7] is symmetric about 0 with 7.5 steps a side), every
    activation an 8-bit grid, and the output stays close to float and picks the same classes."""
    model, x = residual_net.to(device), images.to(device)
    q = lowbit.quantize(model, x, weights_bits=4, activation_bits=8, weights_observer="minmax")
    layers = dict(quant_layers(q))
    for name, layer in layers.items():
        spec = layer.weight_quant.spec
        assert (spec.bits, spec.symmetric, spec.granularity, spec.observer) == (4, True, "per_channel", "minmax"), name
        assert layer.weight_quant.qrange == (-8, 7)
    acts = activation_quantizers(q)
    assert acts and all(aq.spec.bits == 8 and aq.state == "quantize" for _, aq in acts)
    for name in ("side", "head"):  # no batch-norm is folded into these: their steps follow from the model's weights
        w = model.get_submodule(name).weight.detach().flatten(1)
        # to the nearest float16 number, as freezing leaves scales
        torch.testing.assert_close(layers[name].weight_quant.scale, w.abs().amax(1) / 7.5, rtol=2**-11, atol=0)
    assert sqnr_db(model, q, x) > 24
    with torch.no_grad():
        assert (q(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.95


def test_calibration_accepts_pairs_and_ignores_labels(residual_net, images):
    labels = torch.randint(0, 5, (len(images),))
    pairs = [(images[i:i + 16], labels[i:i + 16]) for i in range(0, 64, 16)]
    a = lowbit.quantize(residual_net, pairs, weights_bits=8, activation_bits=8)
    b = lowbit.quantize(residual_net, [x for x, _ in pairs], weights_bits=8, activation_bits=8)
    with torch.no_grad():
        assert torch.equal(a(images), b(images))


def test_lower_bits_give_larger_error(residual_net, images, device):
    model, x = residual_net.to(device), images.to(device)
    with torch.no_grad():
        ref = model(x)
        errs = [(lowbit.quantize(model, x, weights_bits=b, activation_bits=b)(x) - ref).norm().item()
                for b in (8, 4, 2)]
    assert errs[0] < errs[1] < errs[2]


def test_weights_only_needs_no_data(residual_net, images, device):
    """Without data, weights are still quantized (a 4-bit row takes at most 16 values) and each extra bit of weight
    precision buys about 6 dB of output SQNR: 8-bit weights beat 4-bit ones by well over 12 dB."""
    model, x = residual_net.to(device), images.to(device)
    q4 = lowbit.quantize(model, None, weights_bits=4, activation_bits=None, device=device)
    q8 = lowbit.quantize(model, None, weights_bits=8, activation_bits=None, device=device)
    assert not activation_quantizers(q4)
    for name, layer in quant_layers(q4):
        assert layer.frozen, name
        assert all(len(torch.unique(row)) <= 16 for row in layer.weight.detach().flatten(1)), name
    low, high = sqnr_db(model, q4, x), sqnr_db(model, q8, x)
    assert low > 18
    assert high > low + 12


def test_quantized_model_stays_on_the_model_device(residual_net):
    """The whole pipeline on a meta-device model (standing in for a GPU) leaves no tensor on the CPU."""
    q = lowbit.quantize(residual_net, None, weights_bits=4, activation_bits=16, dynamic_activations=True,
                        weights_observer="minmax", device="meta")  # the MSE search is slow on meta tensors
    assert all(l.frozen for _, l in quant_layers(q)) and activation_quantizers(q)
    assert {t.device.type for t in [*q.parameters(), *q.buffers()]} == {"meta"}


def test_static_activations_without_data_is_a_clear_error(residual_net):
    with pytest.raises(LowbitError, match="calibration data is required"):
        lowbit.quantize(residual_net, None, weights_bits=8, activation_bits=8)


def test_nan_in_calibration_data_is_rejected(residual_net, images):
    bad = images.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(LowbitError, match="NaN"):
        lowbit.quantize(residual_net, bad)


def test_unknown_method_is_rejected(residual_net, images):
    with pytest.raises(LowbitError, match="unknown method"):
        lowbit.quantize(residual_net, images, method="magic")


def test_fp16_and_dynamic_int8_recipes(residual_net, images, device):
    model, x = residual_net.to(device), images.to(device)
    with torch.no_grad():
        ref = model(x)
        fp16 = lowbit.quantize(model, None, weights_bits="fp16", activation_bits="fp16")
        assert (fp16(x) - ref).norm() / ref.norm() < 1e-3
        dyn = lowbit.quantize(model, None, weights_bits=8, activation_bits=16, dynamic_activations=True)
        assert all(q.spec.dynamic for _, q in activation_quantizers(dyn))
        assert (dyn(x) - ref).norm() / ref.norm() < 0.02


def test_first_last_bits_keep_outer_layers_wide(images):
    torch.manual_seed(0)
    q = lowbit.quantize(randomize_bn(ResidualNet()), images, weights_bits=2, activation_bits=4, first_last_bits=8)
    bits = {n: l.weight_quant.spec.bits for n, l in quant_layers(q)}
    assert bits["stem.0"] == 8 and bits["head"] == 8 and bits["b1.0"] == 2
    assert dict(activation_quantizers(q))["act_quant.x"].spec.bits == 8


def test_first_last_bits_reach_the_last_layers_input_through_a_flatten(images):
    """The classifier's input is quantized after pooling, a flatten away from the layer: it is the last layer's
    input all the same and takes the outer layers' width."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5)).eval()
    q = lowbit.quantize(net, images, weights_bits=2, activation_bits=2, first_last_bits=8)
    feeding = layer_input_quantizers(q)
    quantizers = dict(q.named_modules())
    assert quantizers[feeding["6"]].spec.bits == 8 and quantizers[feeding["2"]].spec.bits == 2


def test_constant_channel_does_not_produce_nan(residual_net, images):
    """A constant output channel and an all-zero one get finite grids: the zero row stays exactly zero, the
    constant row stays constant within half a step of its folded value, and the network output stays close."""
    with torch.no_grad():
        residual_net.b1[0].weight[3].fill_(0.25)
        residual_net.b1[0].weight[4].zero_()
    q = lowbit.quantize(residual_net, images, weights_bits=4, activation_bits=4)
    for _, layer in quant_layers(q):
        assert torch.isfinite(layer.weight_quant.scale).all() and (layer.weight_quant.scale > 0).all()
    layer = dict(quant_layers(q))["b1.0"]
    bn = residual_net.b1[1]
    folded = 0.25 * (bn.weight[3] / torch.sqrt(bn.running_var[3] + bn.eps)).item()
    row3, row4 = layer.weight.detach()[3], layer.weight.detach()[4]
    assert torch.equal(row4, torch.zeros_like(row4))
    assert len(torch.unique(row3)) == 1
    assert abs(row3.flatten()[0].item() - folded) <= layer.weight_quant.scale[3].item() / 2 * (1 + 1e-3)
    assert sqnr_db(residual_net, q, images) > 12


def test_zero_activations_do_not_produce_nan(images, device):
    torch.manual_seed(0)
    model = randomize_bn(ResidualNet())
    # through the stages: lowbit.quantize itself refuses blank calibration images (see data/scale_check.py)
    q = prepare(model.to(device), QuantConfig.from_bits(8, 8))
    calibrate(q, [torch.zeros_like(images).to(device)])
    for _, aq in activation_quantizers(q):
        assert torch.isfinite(aq.scale).all() and (aq.scale > 0).all()
