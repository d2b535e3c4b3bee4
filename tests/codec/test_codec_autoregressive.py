"""Autoregressive codecs quantized: the masked context model stays masked, and its means and scales are computed
in exact integers, so that the latents decode bit for bit under float perturbations, other thread counts and in
other processes, where the float codec mis-decodes."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from codec_helpers import Perturbed, photos
from conftest import rewrite
from safetensors.torch import load_file

import lowbit
from lowbit.codec.architectures import codec_architecture
from lowbit.codec.autoregressive import context_plan, has_exact_context
from lowbit.codec.exact import input_codes
from lowbit.codec.masked_conv import QMaskedConv2d
from lowbit.errors import LowbitError

ARCHITECTURES = ("mbt2018-small", "cheng2020-anchor")  # GDN transforms; residual ones with sub-pixel upsampling


def _codec(name: str = ARCHITECTURES[0]) -> torch.nn.Module:
    """A tiny untrained joint autoregressive codec with latents and side information that are not all zero."""
    torch.manual_seed(0)
    model = codec_architecture(name).create(8, 8).eval()
    with torch.no_grad():
        [m for m in model.g_a.modules() if isinstance(m, torch.nn.Conv2d)][-1].weight.mul_(8)
        model.h_a[-1].weight.mul_(30)
    model.update(force=True)
    model.lowbit_arch = {"task": "image-codec", "name": name, "kwargs": {"N": 8, "M": 8}}
    return model


def decoded_latents(model, string, shape):
    """The decoder's latents (what its coding loop fills in, before the synthesis transform) for one image.
    Also run, as source, in another process."""
    import torch

    z_hat = model.entropy_bottleneck.decompress([string[1]], shape)
    params = model.h_s(z_hat)
    height, width = z_hat.shape[2] * 4, z_hat.shape[3] * 4
    y_hat = torch.zeros((1, model.M, height + 4, width + 4))
    model._decompress_ar(string[0], y_hat, params, height, width, 5, 2)
    return y_hat


def _encoded(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[bytes], list[int], torch.Tensor]:
    """One image's (y string, z string), the side information's shape, and the encoder's latents."""
    with torch.no_grad():
        out = model.compress(x)
        y = model.g_a(x)
        z_hat = model.entropy_bottleneck.decompress(out["strings"][1], out["shape"])
        params = model.h_s(z_hat)
        y_hat = F.pad(y, (2, 2, 2, 2))
        model._compress_ar(y_hat, params, y.shape[2], y.shape[3], 5, 2)
    return [out["strings"][0][0], out["strings"][1][0]], list(out["shape"]), y_hat


@pytest.fixture(scope="module", params=ARCHITECTURES)
def codecs(request):
    model = _codec(request.param)
    qmodel = lowbit.quantize(model, photos(4, 128), weights_bits=8, activation_bits=16, dynamic_activations=True)
    return model, qmodel


def test_the_context_model_is_quantized_and_its_mask_survives_rounding(codecs):
    _, qmodel = codecs
    layer = qmodel.context_prediction
    assert isinstance(layer, QMaskedConv2d) and layer.frozen
    hidden = layer.mask == 0
    assert bool(hidden.any()) and bool((layer.weight[hidden] == 0).all()) and bool((layer.weight[~hidden] != 0).any())
    assert all(not key.endswith("mask") for key in qmodel.state_dict())  # the architecture's, never the file's
    layer.unfreeze()
    scale, _ = layer.weight_quant.grid(4)
    layer.rounding = lambda w, s, zp, lo, hi: w + s  # a rounding that moves every weight one step
    try:
        assert bool((layer.fake_quant_weight()[hidden] == 0).all())
    finally:
        layer.rounding = None
        layer.freeze()


def test_the_integer_context_path_agrees_with_the_fake_quantized_layers(codecs):
    _, qmodel = codecs
    plan = context_plan(qmodel)
    layer = qmodel.context_prediction
    torch.manual_seed(1)
    window = torch.round(torch.randn(1, 8, 5, 5) * 3) + torch.rand(1, 8, 5, 5)
    side = torch.randn(1, qmodel.entropy_parameters[0].in_channels - layer.out_channels, 1, 1)
    hooks = dict(qmodel.entropy_parameters._forward_hooks)  # its forward is exact too: the fake-quantized layers
    qmodel.entropy_parameters._forward_hooks.clear()
    with torch.no_grad():
        context = F.conv2d(layer.input_quant(window), layer.weight, layer.bias)
        fake = qmodel.entropy_parameters(torch.cat((side, context), dim=1))
    qmodel.entropy_parameters._forward_hooks.update(hooks)
    scales, means = plan.gaussian_parameters(input_codes(plan.joint_grid, side), window)
    exact = torch.cat((scales, means), dim=1)
    assert not torch.equal(fake, exact)  # different arithmetic...
    assert float((fake - exact).abs().max()) < 1e-3 * float(fake.abs().max())  # ...the same function


def test_float_codec_misdecodes_under_perturbation_and_the_integer_one_does_not(codecs):
    model, qmodel = codecs
    assert has_exact_context(qmodel) and not has_exact_context(model)
    broken = 0
    for i in range(3):
        x = photos(1, 128, 20 + i)
        for codec, exact in ((model, False), (qmodel, True)):
            strings, shape, encoded = _encoded(codec, x)
            with torch.no_grad():
                clean = decoded_latents(codec, strings, shape)
                with Perturbed(codec.entropy_parameters, 1e-3):
                    perturbed = decoded_latents(codec, strings, shape)
            if exact:
                assert torch.equal(clean, encoded) and torch.equal(perturbed, clean)
            else:
                broken += not torch.equal(perturbed, clean)
    assert broken >= 2


def test_latents_decode_bit_exactly_in_another_process_with_other_threads(codecs, tmp_path):
    _, qmodel = codecs
    path = lowbit.save(qmodel, tmp_path / "c.lowbit")
    torch.set_num_threads(1)
    strings, shape, encoded = _encoded(qmodel, photos(1, 128, 40))
    for g, s in enumerate(strings):
        (tmp_path / f"s{g}.bin").write_bytes(s)
    script = inspect.getsource(decoded_latents) + textwrap.dedent(f"""
        import torch, lowbit
        from pathlib import Path
        from safetensors.torch import save_file
        torch.set_num_threads(2)
        model = lowbit.load({str(path)!r})
        folder = Path({str(tmp_path)!r})
        strings = [(folder / f"s{{g}}.bin").read_bytes() for g in range(2)]
        with torch.no_grad():
            y_hat = decoded_latents(model, strings, {shape!r})
        save_file({{"y_hat": y_hat.contiguous()}}, str(folder / "y_hat.safetensors"))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.equal(load_file(str(tmp_path / "y_hat.safetensors"))["y_hat"], encoded)


def test_the_synthesis_input_keeps_the_coded_means_at_w8a8():
    """The forward rounds the latents to integers, the coding loop adds the predicted means: a grid fitted to
    the integers alone would round the means away from every decoded latent."""
    qmodel = lowbit.quantize(_codec(), photos(4, 128), weights_bits=8, activation_bits=8)
    _, _, coded = _encoded(qmodel, photos(1, 128, 20))
    coded = coded[:, :, 2:-2, 2:-2]
    grid = qmodel.g_s[0].input_quant
    lost = float((grid(coded) - coded).abs().mean())
    assert lost < 0.5 * float((coded - coded.round()).abs().mean())


def test_a_file_whose_context_model_reads_undecoded_latents_is_refused(codecs, tmp_path):
    _, qmodel = codecs
    path = lowbit.save(qmodel, tmp_path / "c.lowbit")
    hidden = (qmodel.context_prediction.mask == 0).reshape(-1)

    def unmask(tensors):  # 8-bit codes are stored flat, in the weight's order
        codes = tensors["context_prediction.qweight"]
        codes[hidden] = codes[~hidden].max()

    with pytest.raises(LowbitError, match="masked context model are not zero"):
        lowbit.load(rewrite(path, tmp_path / "edited.lowbit", edit_tensors=unmask))
    assert torch.equal(lowbit.load(rewrite(path, tmp_path / "same.lowbit")).context_prediction.weight,
                       qmodel.context_prediction.weight)
