"""A convolution's bias that OpenVINO would miscompute, written as an Add: both runtimes agree with lowbit."""

import torch
from torch import nn

import lowbit
from lowbit.deploy import export
from lowbit.deploy.openvino_check import compile_openvino
from lowbit.deploy.runtime import OnnxClassifier

from conftest import openvino_exact_weight_bits


class PatchTokens(nn.Module):
    """A vision transformer's first steps: patch embedding, tokens, a class token prepended."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.token = nn.Parameter(torch.randn(1, 1, 8))
        self.head = nn.Linear(8, 5)
        with torch.no_grad():
            self.embed.bias.copy_(torch.linspace(-2, 2, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(torch.cat([self.token.expand(x.shape[0], -1, -1), tokens], 1).mean(1))


def test_openvino_adds_a_patch_embedding_bias_per_channel(images, tmp_path):
    """A convolution's bias reaching a Concat through a reshape and a transpose is written so that OpenVINO
    adds each channel's own bias (and onnxruntime still computes what lowbit does)."""
    torch.manual_seed(0)
    qmodel = lowbit.quantize(PatchTokens().eval(), images, weights_bits=openvino_exact_weight_bits(),
                             activation_bits=8)
    report = export(qmodel, tmp_path / "m.onnx", images[:2])
    assert any("reaches a Concat" in line for line in report.float_compute), report.float_compute
    path = report.path
    compiled, _ = compile_openvino(path)
    with torch.no_grad():
        ours = qmodel(images)
    for theirs in (torch.from_numpy(compiled(images.numpy())[0]), OnnxClassifier(path)(images)):
        assert (ours - theirs).abs().max() < 0.05 * ours.abs().max()
