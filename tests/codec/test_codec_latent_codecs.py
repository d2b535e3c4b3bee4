"""CompressAI's latent-codec models (here the checkerboard context model): their entropy-parameter networks,
nested inside the latent codec, are found and computed in exact integers, so that the latents decode bit for
bit under float perturbations where the float codec mis-decodes."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap

import torch
from codec_helpers import Perturbed, photos
from safetensors.torch import load_file

import lowbit
from lowbit.codec.architectures import codec_architecture
from lowbit.codec.bitstream import CodecId, write_bitstream
from lowbit.codec.coding import encode
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


def decoded_latents(model, strings, shape):
    """The decoder's latents of a latent-codec model. Also run, as source, in another process."""
    return model.latent_codec.decompress(strings, shape)["y_hat"]


def test_latents_decode_bit_exactly_in_another_process_with_other_threads(tmp_path):
    model = _codec()
    model.lowbit_arch = {"task": "image-codec", "name": ARCH, "kwargs": {"N": 8, "M": 8}}
    qmodel = lowbit.quantize(model, photos(4, 128), weights_bits=8, activation_bits=8)
    lowbit.save(qmodel, tmp_path / "c.lowbit")
    torch.set_num_threads(1)
    x = photos(1, 128, 40)
    with torch.no_grad():
        encoded = qmodel.latent_codec.compress(qmodel.g_a(x))["y_hat"]
    # the bitstream file, whose latent sizes (one per latent) need its format version 2
    write_bitstream(tmp_path / "x.bits", CodecId("tiny", None, ARCH, "-"), encode(qmodel, x[0], 64))
    script = inspect.getsource(decoded_latents) + textwrap.dedent(f"""
        import torch, lowbit
        from safetensors.torch import save_file
        from lowbit.codec.bitstream import read_bitstream
        from lowbit.codec.coding import torch_shape
        torch.set_num_threads(2)
        model = lowbit.load({str(tmp_path / "c.lowbit")!r})
        _, stream = read_bitstream({str(tmp_path / "x.bits")!r})
        with torch.no_grad():
            y_hat = decoded_latents(model, stream.strings, torch_shape(stream.shape))
        save_file({{"y_hat": y_hat.contiguous()}}, {str(tmp_path / "y_hat.safetensors")!r})
    """)
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "2"},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.equal(load_file(str(tmp_path / "y_hat.safetensors"))["y_hat"], encoded)


def test_the_entropy_scope_keeps_the_transforms_float_and_quantizes_the_latent_codec():
    from lowbit.codec.task import scope_overrides

    model = _codec()
    floats = [o.pattern for o in scope_overrides(model, "entropy")]
    assert floats == ["g_a*", "g_s*"]
