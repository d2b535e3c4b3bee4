import pytest
import torch

import lowbit
from conftest import ResidualNet, randomize_bn
from lowbit import LowbitError, QuantConfig
from lowbit.calibrate import calibrate
from lowbit.graph import activation_quantizers, prepare
from lowbit.layers import quant_layers


def test_keyword_form_and_config_form_agree(residual_net, images, device):
    a = lowbit.quantize(residual_net, images, weights_bits=4, activation_bits=8, device=device)
    b = lowbit.quantize(residual_net, images, QuantConfig.from_bits(4, 8), device=device)
    x = images.to(device)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


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
    q = lowbit.quantize(residual_net, None, weights_bits=4, activation_bits=None, device=device)
    assert all(l.frozen for _, l in quant_layers(q))
    with torch.no_grad():
        assert torch.isfinite(q(images.to(device))).all()


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


def test_constant_channel_does_not_produce_nan(residual_net, images):
    with torch.no_grad():
        residual_net.b1[0].weight[3].fill_(0.25)
        residual_net.b1[0].weight[4].zero_()
    q = lowbit.quantize(residual_net, images, weights_bits=4, activation_bits=4)
    for _, layer in quant_layers(q):
        assert torch.isfinite(layer.weight_quant.scale).all()
    with torch.no_grad():
        assert torch.isfinite(q(images)).all()


def test_zero_activations_do_not_produce_nan(images, device):
    torch.manual_seed(0)
    model = randomize_bn(ResidualNet())
    # through the stages: lowbit.quantize itself refuses blank calibration images (see data/scale_check.py)
    q = prepare(model.to(device), QuantConfig.from_bits(8, 8))
    calibrate(q, [torch.zeros_like(images).to(device)])
    for _, aq in activation_quantizers(q):
        assert torch.isfinite(aq.scale).all() and (aq.scale > 0).all()
