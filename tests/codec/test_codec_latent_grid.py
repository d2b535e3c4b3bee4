"""Synthesis inputs on exact grids: decoded latents (integers plus per-channel medians) pass the first
quantizer of the synthesis transform unchanged up to one constant per channel, which the layer's bias takes back."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from codec_helpers import photo_like, tiny_codec

import lowbit
from lowbit.codec.latent_grid import channel_rows, exact_grid, lattice_offsets
from lowbit.quantizer import Quantizer
from lowbit.spec import QuantSpec


def _photos(count: int = 4, side: int = 64) -> torch.Tensor:
    return torch.stack([torch.from_numpy(photo_like(side, side, seed=i)).permute(2, 0, 1) for i in range(count)]) / 255


def _codec_with_fractional_medians() -> torch.nn.Module:
    """A tiny factorized codec whose latents span many integers and whose medians are not integers, as a
    trained codec's are."""
    codec = tiny_codec()
    with torch.no_grad():
        codec.g_a[-1].weight.mul_(100)
        medians = torch.linspace(-0.45, 0.4, codec.entropy_bottleneck.quantiles.shape[0])
        codec.entropy_bottleneck.quantiles[:, 0, :] += (medians - codec.entropy_bottleneck.quantiles[:, 0, 1])[:, None]
    return codec


def _decoded_latents(codec: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return codec.entropy_bottleneck(codec.g_a(images))[0]


def test_lattice_offsets_finds_one_offset_per_channel_and_nothing_in_continuous_values():
    offsets = torch.tensor([0.25, 0.0, 0.7])
    x = torch.randint(-20, 20, (4, 3, 5, 5)).float() + offsets[None, :, None, None]
    assert torch.allclose(lattice_offsets(channel_rows(x)), offsets, atol=1e-5)
    assert lattice_offsets(channel_rows(x + 0.01 * torch.randn_like(x))) is None


def test_exact_grid_holds_every_integer_of_its_range_and_refuses_ranges_too_wide_for_the_width():
    q = Quantizer(QuantSpec(bits=8))
    step, zero_point = exact_grid(-14.3, 17.9, q)
    q.set_qparams(step, zero_point)
    q.set_state("quantize")
    integers = torch.arange(-14, 18).float()
    assert float(step) <= 1 and torch.equal(q(integers), integers)
    assert exact_grid(-300.0, 300.0, q) is None


def test_decoded_latents_reach_the_synthesis_transform_off_by_one_constant_per_channel():
    codec = _codec_with_fractional_medians()
    qmodel = lowbit.quantize(codec, _photos(), weights_bits=8, activation_bits=8)
    latents = _decoded_latents(codec, _photos(2))
    assert latents.max() - latents.min() > 16
    error = qmodel.get_submodule("g_s.0").input_quant(latents) - latents
    per_channel = error.transpose(0, 1).reshape(error.shape[1], -1)
    assert float((per_channel - per_channel[:, :1]).abs().max()) < 1e-4
    assert float(per_channel[:, 0].abs().max()) > 1e-3  # the medians' fractions are not on the grid...


def test_the_first_synthesis_layer_is_unbiased_after_its_input_is_rounded():
    codec = _codec_with_fractional_medians()
    qmodel = lowbit.quantize(codec, _photos(), weights_bits=8, activation_bits=8, equalize=False,
                             bias_correction=False)  # only the latents' constant moves the bias
    layer, original = qmodel.get_submodule("g_s.0"), codec.get_submodule("g_s.0")
    latents = _decoded_latents(codec, _photos(4))
    with torch.no_grad():
        rounded_input = layer(latents)
        exact_input = F.conv_transpose2d(latents, layer.fake_quant_weight(), original.bias, layer.stride,
                                         layer.padding, layer.output_padding)
    moved = (rounded_input - exact_input).mean((0, 2, 3))
    # ...and the constant they are moved by is taken back by the bias, on average over the output
    assert float(moved.abs().max()) < 1e-3 < float((rounded_input - exact_input).abs().max())



def test_learned_rounding_keeps_the_calibrated_grid():
    codec = _codec_with_fractional_medians()
    qmodel = lowbit.quantize(codec, _photos(), weights_bits=8, activation_bits=8, method="adaround", iters=2)
    latents = _decoded_latents(codec, _photos(2))
    error = qmodel.get_submodule("g_s.0").input_quant(latents) - latents
    per_channel = error.transpose(0, 1).reshape(error.shape[1], -1)
    assert float((per_channel - per_channel[:, :1]).abs().max()) > 1e-3
