"""CompressAI's latent-codec models (here the checkerboard context model): their entropy-parameter networks,
nested inside the latent codec, are found and computed in exact integers, so that the latents decode bit for
bit under float perturbations where the float codec mis-decodes."""

from __future__ import annotations

import torch
from codec_helpers import Perturbed, photos

import lowbit
from lowbit.codec.architectures import codec_architecture
from lowbit.codec.exact import is_exact, parameter_networks
from lowbit.codec.task import exact_entropy_parameters

ARCH = "cheng2020-anchor-checkerboard"


def _codec() -> torch.nn.Module:
    torch.manual_seed(0)
    model = codec_architecture(ARCH).create(8, 8).eval()
    with torch.no_grad():
        [m for m in model.g_a.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.mul_(8)
        model.latent_codec["hyper"].h_a[-1].weight.mul_(30)
    model.update(force=True)
    return model


def _latents(model: torch.nn.Module, x: torch.Tensor, perturb: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder's and the decoder's latents (the decoder's parameter networks perturbed by ``perturb``)."""
    with torch.no_grad():
        out = model.compress(x)
        encoded = model.latent_codec.compress(model.g_a(x))["y_hat"]
        with Perturbed(model.latent_codec, perturb):
            decoded = model.latent_codec.decompress(out["strings"], out["shape"])["y_hat"]
    return encoded, decoded


def test_nested_parameter_networks_are_exact_and_decode_the_same_under_perturbation():
    model = _codec()
    qmodel = lowbit.quantize(model, photos(4, 128), weights_bits=8, activation_bits=16, dynamic_activations=True)
    names = [name for name, _ in parameter_networks(qmodel)]
    assert "latent_codec.hyper.h_s" in names and any(n.endswith("y.context_prediction") for n in names)
    assert all(is_exact(network) for _, network in parameter_networks(qmodel))
    assert exact_entropy_parameters(qmodel).startswith("entropy parameters in exact integers")
    broken = 0
    for i in range(3):
        x = photos(1, 128, 20 + i)
        encoded, decoded = _latents(qmodel, x, 1e-3)
        assert torch.equal(decoded, encoded)
        float_encoded, float_decoded = _latents(model, x, 1e-3)
        broken += not torch.equal(float_decoded, float_encoded)
    assert broken >= 2
