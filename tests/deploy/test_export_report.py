"""The export's account of convolutions onnxruntime computes in float because of what follows them."""

from __future__ import annotations

import torch

import lowbit
from lowbit.codec.architectures import codec_architecture
from lowbit.codec.onnx_transforms import export_transforms
from lowbit.deploy.runtime import kernel_summary, optimized_op_counts


def float_kernels(path) -> int:
    return kernel_summary(optimized_op_counts(path))[1]


def _h_a_report(arch: str, folder):
    """The export report of the hyper-analysis transform of a tiny W8A8 codec (layers swapped in place, each
    quantizing its own input, so nothing quantizes a convolution's output before its activation)."""
    torch.manual_seed(0)
    codec = codec_architecture(arch).create(8, 8).eval()
    codec.update(force=True)
    qcodec = lowbit.quantize(codec, torch.rand(4, 3, 64, 64), weights_bits=8, activation_bits=8)
    return export_transforms(qcodec, folder / arch, "digest")["h_a"]


def test_a_convolution_before_a_leaky_relu_is_named_with_its_reason(tmp_path):
    leaky = _h_a_report("mbt2018-mean-small", tmp_path)  # conv, LeakyReLU, conv, LeakyReLU, conv
    relu = _h_a_report("bmshj2018-hyperprior-small", tmp_path)  # the same with ReLU
    assert float_kernels(leaky.path) == 3 and float_kernels(relu.path) == 1  # first two in integers with ReLU
    assert "2 convolutions: the output goes to LeakyRelu before any activation grid" in " ".join(leaky.float_compute)
    named = [line for line in relu.float_compute if "convolution" in line]
    assert len(named) == 1 and named[0].startswith("1 convolution: the output goes to the network's output")
