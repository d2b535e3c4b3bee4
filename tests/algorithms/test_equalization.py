from collections import OrderedDict

import pytest
import torch
from compressai.layers import GDN
from torch import nn

import lowbit
from lowbit.algorithms.equalization import channel_ranges, equalize_ranges, find_chains, rescale
from lowbit.cli import build_parser
from lowbit.cli.common import config_from_args
from lowbit.config import Override, QuantConfig


def unbalance(model: nn.Sequential, spread: float = 100.0) -> nn.Sequential:
    """Spread each chain's channel ranges over ``spread``x with compensating consumer weights: the same function,
    the case a per-tensor activation grid handles worst (one channel spans the grid, others a hundredth)."""
    for chain in find_chains(model, QuantConfig.from_bits(8, 8)):
        a, g, b = (model.get_submodule(n) for n in (chain.producer, chain.between, chain.consumer))
        channels = b.weight.shape[0 if isinstance(b, nn.ConvTranspose2d) else 1]
        rescale(a, g, b, torch.logspace(0, torch.log10(torch.tensor(spread)).item(), channels))
    return model


def relu_net() -> nn.Sequential:
    torch.manual_seed(0)
    return unbalance(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1),
                                   nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 5)).eval())


def random_gdn(channels: int, inverse: bool) -> GDN:
    gdn = GDN(channels, inverse=inverse)
    with torch.no_grad():
        gdn.gamma.copy_(gdn.gamma_reparam.init(torch.rand(channels, channels) * 0.2))
        gdn.beta.copy_(gdn.beta_reparam.init(torch.rand(channels) + 0.5))
    return gdn


def gdn_net() -> nn.Sequential:
    torch.manual_seed(0)
    return unbalance(nn.Sequential(nn.Conv2d(3, 12, 3, stride=2, padding=1), random_gdn(12, False),
                                   nn.ConvTranspose2d(12, 10, 4, stride=2, padding=1), random_gdn(10, True),
                                   nn.Conv2d(10, 3, 3, padding=1)).eval())


@pytest.fixture
def pictures() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(16, 3, 8, 8)


@pytest.mark.parametrize("build", [relu_net, gdn_net])
def test_equalized_model_computes_the_same_function(build, pictures):
    model = build()
    config = QuantConfig.from_bits(8, 8)
    equalized = equalize_ranges(model, [pictures], config)
    assert equalized is not model
    with torch.no_grad():
        reference, out = model(pictures), equalized(pictures)
    assert torch.allclose(out, reference, rtol=1e-4, atol=1e-5 * reference.abs().max().item())
    # the weights did move: an identity transform would pass the check above too
    assert not torch.allclose(equalized[0].weight, model[0].weight)


def test_full_strength_gives_every_channel_the_same_range(pictures):
    model = relu_net()
    before = channel_ranges(model, {"2"}, [pictures])["2"]
    equalized = equalize_ranges(model, [pictures], QuantConfig.from_bits(8, 8))
    after = channel_ranges(equalized, {"2"}, [pictures])["2"]
    assert before.max() / before.min() > 20
    assert after.max() / after.min() == pytest.approx(1.0, rel=1e-4)


def test_gdn_chain_balances_its_input_and_output_ranges(pictures):
    model = gdn_net()
    names = {"1", "2"}
    before = channel_ranges(model, names, [pictures])
    after = channel_ranges(equalize_ranges(model, [pictures], QuantConfig.from_bits(8, 8)), names, [pictures])
    spread = lambda r: (r["1"] * r["2"]).sqrt().max() / (r["1"] * r["2"]).sqrt().min()  # noqa: E731
    assert spread(before) > 20
    assert spread(after) == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("build", [relu_net, gdn_net])
def test_equalization_lowers_the_error_of_static_8_bit_activations(build, pictures):
    model = build()
    errors = {}
    for equalize in (False, True):
        q = lowbit.quantize(model, pictures, weights_bits=8, activation_bits=8, equalize=equalize)
        assert q.lowbit_info.config.equalize is equalize
        with torch.no_grad():
            errors[equalize] = (q(pictures) - model(pictures)).pow(2).mean().item()
    assert errors[True] < 0.5 * errors[False]


def test_chains_left_alone_where_nothing_is_on_a_static_grid():
    model = gdn_net()
    assert [c.consumer for c in find_chains(model, QuantConfig.from_bits(8, 8))] == ["2", "4"]
    assert find_chains(model, QuantConfig.from_bits(8, None)) == []
    assert find_chains(model, QuantConfig.from_bits(8, 16, dynamic_activations=True)) == []
    assert find_chains(model, QuantConfig.from_bits("fp16", "fp16")) == []
    kept = QuantConfig.from_bits(8, 8, overrides=(Override("4", keep_float=True),))
    assert [c.consumer for c in find_chains(model, kept)] == ["2"]
    grouped = nn.Sequential(nn.Conv2d(4, 4, 1, groups=2), nn.ReLU(), nn.Conv2d(4, 4, 1))
    assert find_chains(grouped, QuantConfig.from_bits(8, 8)) == []


def test_chains_inside_the_modules_a_task_keeps_are_left_alone():
    model = nn.Sequential(OrderedDict(h=gdn_net(), h2=gdn_net()))
    config = QuantConfig.from_bits(8, 8)
    assert [c.consumer for c in find_chains(model, config)] == ["h.2", "h.4", "h2.2", "h2.4"]
    assert [c.consumer for c in find_chains(model, config, keep=("h",))] == ["h2.2", "h2.4"]


def test_consumers_with_weights_below_8_bits_are_left_alone():
    model = gdn_net()
    assert find_chains(model, QuantConfig.from_bits(4, 8)) == []
    wide_last = QuantConfig.from_bits(4, 8, overrides=(Override("4", weights=QuantConfig().weights_at(8)),))
    assert [c.consumer for c in find_chains(model, wide_last)] == ["4"]


def test_classifiers_leave_it_off_and_the_cli_can_turn_it_on(residual_net, images):
    q = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=8)
    assert q.lowbit_info.config.equalize is False
    parser = build_parser()
    args = parser.parse_args(["quantize", "--model", "resnet20", "--equalize"])
    assert config_from_args(args).equalize is True
    args = parser.parse_args(["quantize", "--model", "resnet20", "--no-equalize"])
    assert config_from_args(args).equalize is False
    assert QuantConfig.from_dict(QuantConfig.from_bits(8, 8, equalize=True).to_dict()).equalize is True
