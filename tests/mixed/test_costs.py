import pytest
import torch
from safetensors import safe_open

import lowbit
from conftest import ResidualNet, randomize_bn
from lowbit.layers import quant_layers
from lowbit.mixed.costs import describe_layers, weight_bytes


@pytest.mark.parametrize("bits,kw", [(2, {}), (3, {}), (4, {}), (8, {}), (12, {}), ("fp16", {}),
                                     (4, {"per_channel": False}), (8, {"symmetric_weights": False}),
                                     (12, {"symmetric_weights": False})])
def test_weight_bytes_match_the_saved_file(tmp_path, bits, kw):
    q = lowbit.quantize(randomize_bn(ResidualNet()), None, weights_bits=bits, activation_bits=None, **kw)
    path = lowbit.save(q, tmp_path / "m.lowbit")
    with safe_open(str(path), framework="pt") as f:
        for name, layer in quant_layers(q):
            stored = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size()
                         for k in f.keys() if k.rpartition(".")[0] == name and k.rpartition(".")[2] in
                         ("qweight", "scale", "zero_point"))
            expected = weight_bytes(layer.weight.numel(), layer.weight.shape[0], layer.weight_quant.spec)
            assert stored == expected, name


def test_describe_layers_counts_macs_and_inputs():
    q = lowbit.quantize(randomize_bn(ResidualNet()), torch.randn(8, 3, 16, 16))
    costs = {c.name: c for c in describe_layers(q, torch.randn(1, 3, 16, 16))}
    assert costs["stem.0"].macs == 8 * 16 * 16 * 3 * 9
    assert costs["b2.0"].macs == 16 * 8 * 8 * 8 * 9  # stride 2
    assert costs["head"].macs == 20 * 5
    assert costs["stem.0"].input == "act_quant.x"
    # the two layers reading the first block's output share one quantizer
    assert costs["b2.0"].input == costs["proj.0"].input == costs["side"].input
