"""Biases on the int32 grid integer runtimes use: the simulated model computes what the deployed one does."""

import torch

import lowbit
from conftest import TinyViT
from lowbit.deploy.onnx_modules import exportable
from lowbit.graph import layer_input_quantizers
from lowbit.integer_bias import bias_codes, bias_grid
from lowbit.layers import quant_layers


def test_frozen_biases_sit_on_the_int32_grid(residual_net, images):
    qmodel = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=8)
    modules, inputs = dict(qmodel.named_modules()), layer_input_quantizers(qmodel)
    snapped = 0
    for name, layer in quant_layers(qmodel):
        scale = bias_grid(layer, modules.get(inputs.get(name, "")))
        if scale is not None:
            assert torch.equal(bias_codes(layer.bias, scale).float() * scale, layer.bias.detach()), name
            snapped += 1
    assert snapped == sum(layer.bias is not None for _, layer in quant_layers(qmodel))


def test_simulated_model_equals_its_integer_form(residual_net, images):
    """The exported form adds int32 biases; the simulated model gives exactly its outputs."""
    for net in (residual_net, TinyViT().eval()):
        x = images if net is residual_net else torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        qmodel = lowbit.quantize(net, x, weights_bits=8, activation_bits=8)
        integer_form, _ = exportable(qmodel)
        with torch.no_grad():
            assert torch.equal(qmodel(x), integer_form(x))


def test_layers_without_a_static_integer_input_keep_their_bias(residual_net, images):
    qmodel = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=16, dynamic_activations=True,
                             bias_correction=False)
    float_biases = {n: m.bias for n, m in residual_net.named_modules() if getattr(m, "bias", None) is not None
                    and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    for name, layer in quant_layers(qmodel):
        if layer.bias is not None and name in float_biases:
            assert torch.equal(layer.bias.detach(), float_biases[name].detach()), name
