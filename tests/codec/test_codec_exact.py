"""The quantized hyperprior synthesis in exact integers, for the scale hyperprior (ReLU) and the mean-scale
hyperprior (LeakyReLU, means and scales): it agrees with the fake-quantized layers, and the latents decode bit
for bit under float perturbations, other thread counts, other batches and other processes, where the float codec
mis-decodes."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from codec_helpers import Perturbed, photos
from safetensors.torch import load_file

import lowbit
from lowbit.codec.architectures import codec_architecture
from lowbit.codec.exact import has_exact_path, integer_forward


ARCHITECTURES = ("bmshj2018-hyperprior-small", "mbt2018-mean-small")


def latents(model, strings, shape):
    """The decoder's latents ``y_hat``: what entropy decoding produces before the synthesis transform (a
    mean-scale hyperprior's h_s predicts means beside the scales). Also run, as source, in another process."""
    z_hat = model.entropy_bottleneck.decompress(strings[1], shape)
    params = model.h_s(z_hat)
    scales, means = params.chunk(2, 1) if params.shape[1] == 2 * model.M else (params, None)
    indexes = model.gaussian_conditional.build_indexes(scales)
    return model.gaussian_conditional.decompress(strings[0], indexes, z_hat.dtype, means)


def _hyperprior(name: str) -> torch.nn.Module:
    """A tiny untrained hyperprior whose side information is not all zero (its h_a output scaled up)."""
    torch.manual_seed(0)
    model = codec_architecture(name).create(8, 8).eval()
    with torch.no_grad():
        model.h_a[-1].weight.mul_(300)
    model.update(force=True)
    model.lowbit_arch = {"task": "image-codec", "name": name, "kwargs": {"N": 8, "M": 8}}
    return model


@pytest.fixture(scope="module", params=ARCHITECTURES)
def codecs(request):
    model = _hyperprior(request.param)
    qmodel = lowbit.quantize(model, photos(4, 128), weights_bits=8, activation_bits=16, dynamic_activations=True)
    return model, qmodel


def test_dynamic_activations_become_static_on_h_s_and_the_exact_path_is_installed(codecs):
    _, qmodel = codecs
    assert has_exact_path(qmodel)
    assert all(not m.input_quant.spec.dynamic for m in qmodel.h_s if hasattr(m, "input_quant"))
    assert all(m.input_quant.spec.dynamic for m in qmodel.g_a if hasattr(m, "input_quant"))


def test_the_integer_path_agrees_with_the_fake_quantized_layers(codecs):
    _, qmodel = codecs
    with torch.no_grad():
        z_hat = torch.round(qmodel.h_a(qmodel.g_a(photos(2, 128, 10)).abs()))
        hooks = dict(qmodel.h_s._forward_hooks)
        qmodel.h_s._forward_hooks.clear()
        fake = qmodel.h_s(z_hat)
        qmodel.h_s._forward_hooks.update(hooks)
        exact = integer_forward(qmodel.h_s, z_hat)
    assert not torch.equal(fake, exact)  # different arithmetic...
    assert float((fake - exact).abs().max()) < 1e-4 * float(fake.abs().max())  # ...the same function


def test_float_codec_misdecodes_under_perturbation_and_the_integer_one_does_not(codecs):
    model, qmodel = codecs
    broken = 0
    for i in range(4):
        x = photos(1, 256, 20 + i)
        for codec, exact in ((model, False), (qmodel, True)):
            with torch.no_grad():
                out = codec.compress(x)
                clean = latents(codec, out["strings"], out["shape"])
                with Perturbed(codec.h_s, 1e-3):
                    perturbed = latents(codec, out["strings"], out["shape"])
            if exact:
                assert torch.equal(perturbed, clean)
            else:
                broken += not torch.equal(perturbed, clean)
    assert broken >= 2


def test_latents_decode_bit_exactly_in_another_process_with_other_threads_and_batch(codecs, tmp_path):
    _, qmodel = codecs
    path = lowbit.save(qmodel, tmp_path / "c.lowbit")
    torch.set_num_threads(1)
    singles, strings = [], [[], []]
    for i in range(2):
        with torch.no_grad():
            out = qmodel.compress(photos(1, 128, 40 + i))
            singles.append(latents(qmodel, out["strings"], out["shape"])[0])
        for group, s in zip(strings, out["strings"]):
            group += s
    for g, group in enumerate(strings):
        for i, s in enumerate(group):
            (tmp_path / f"s{g}_{i}.bin").write_bytes(s)
    script = inspect.getsource(latents) + textwrap.dedent(f"""
        import torch, lowbit
        from pathlib import Path
        from safetensors.torch import save_file
        torch.set_num_threads(2)
        model = lowbit.load({str(path)!r})
        folder = Path({str(tmp_path)!r})
        strings = [[(folder / f"s{{g}}_{{i}}.bin").read_bytes() for i in range(2)] for g in range(2)]
        y_hat = latents(model, strings, {list(out["shape"])!r})
        save_file({{"y_hat": y_hat.contiguous()}}, str(folder / "y_hat.safetensors"))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    batch = load_file(str(tmp_path / "y_hat.safetensors"))["y_hat"]
    assert batch.shape[0] == 2
    for i in range(2):
        assert torch.equal(batch[i], singles[i])
