"""Per-layer SQNR report: layer outputs are compared as the layers produce them."""

import torch

import lowbit
from conftest import ResidualNet, randomize_bn, with_inplace_relus
from lowbit.analysis import per_layer_sqnr


def test_in_place_activations_do_not_change_the_report():
    torch.manual_seed(0)
    model = randomize_bn(ResidualNet())
    inplace = with_inplace_relus(model)
    x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    reports = [per_layer_sqnr(m, lowbit.quantize(m, x, weights_bits=4, activation_bits=8), x)
               for m in (model, inplace)]
    assert [r.name for r in reports[0]] == [r.name for r in reports[1]]
    for a, b in zip(*reports):
        assert abs(a.output_sqnr - b.output_sqnr) < 1e-3 and abs(a.weight_sqnr - b.weight_sqnr) < 1e-3
