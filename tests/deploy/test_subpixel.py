"""Transposed convolutions exported as sub-pixel convolutions: the same values, and integer kernels in onnxruntime."""

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.deploy import export
from lowbit.deploy.runtime import OnnxClassifier, optimized_op_counts
from lowbit.deploy.subpixel import subpixel_plan, subpixel_weight


@pytest.mark.parametrize("kernel, stride, padding, output_padding", [
    ((5, 5), 2, (2, 2), (1, 1)),  # a learned codec's synthesis transform
    ((4, 4), 2, (1, 1), (0, 0)),  # a GAN or U-Net decoder's upsampling
    ((3, 3), 3, (0, 0), (0, 0)),  # non-overlapping patches
    ((5, 3), 3, (1, 0), (0, 0)),  # a different plan along each dimension
    ((3, 3), 2, (1, 1), (1, 1)),  # a U-Net's upsampling: one side of each phase kernel is zero taps
])
def test_subpixel_weight_computes_the_transposed_convolution(kernel, stride, padding, output_padding):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 6, 5, 7, generator=g), torch.randn(6, 4, *kernel, generator=g), torch.randn(4, generator=g)
    expected = F.conv_transpose2d(x, w, b, stride, padding, output_padding)
    plans = tuple(subpixel_plan(k, stride, p, o) for k, p, o in zip(kernel, padding, output_padding))
    weight = subpixel_weight(w, stride, padding, plans, torch.zeros(4))
    phases = F.conv2d(x, weight, b.repeat_interleave(stride * stride), padding=(plans[0][0], plans[1][0]))
    torch.testing.assert_close(F.pixel_shuffle(phases, stride), expected, rtol=0, atol=1e-5)


def test_an_output_that_is_not_a_whole_number_of_phases_has_no_sub_pixel_form():
    assert subpixel_plan(3, 2, 0, 0) is None  # output 2n + 1
    assert subpixel_plan(4, 2, 1, 1) is None  # output 2n + 1


class Upsampler(nn.Module):
    """An encoder-decoder's upsampling path: transposed convolutions feeding quantized layers through ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(16, 16, 4, stride=2, padding=1), nn.ReLU(),
                                nn.ConvTranspose2d(16, 8, 5, stride=2, padding=2, output_padding=1))
        self.head = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.down(x)))


def test_transposed_convolutions_run_on_integer_kernels_and_match_lowbit(images, tmp_path):
    torch.manual_seed(0)
    qmodel = lowbit.quantize(Upsampler().eval(), images, weights_bits=8, activation_bits=8)
    report = export(qmodel, tmp_path / "u.onnx", images[:2])
    assert not any("ConvTranspose2d" in line for line in report.float_compute), report.float_compute
    ops = [n.op_type for n in onnx.load(str(report.path)).graph.node]
    assert "ConvTranspose" not in ops and ops.count("DepthToSpace") == 2
    counts = optimized_op_counts(report.path)
    assert counts["QLinearConv"] == 4 and counts["Conv"] == 0, counts  # both transposed convolutions included
    with torch.no_grad():
        ours = qmodel(images)
    theirs = OnnxClassifier(report.path)(images)
    assert (ours - theirs).abs().max() < 1e-2 * ours.abs().max()


def test_a_transposed_convolution_without_a_sub_pixel_form_runs_in_float_and_is_named(images, tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 4, 3, stride=2)).eval()
    qmodel = lowbit.quantize(model, images, weights_bits=8, activation_bits=8)
    report = export(qmodel, tmp_path / "t.onnx", images[:2])
    assert any(line.startswith("2: ConvTranspose2d") for line in report.float_compute), report.float_compute
    with torch.no_grad():
        ours = qmodel(images)
    theirs = OnnxClassifier(report.path)(images)
    assert ours.shape == theirs.shape == (64, 4, 33, 33)
    assert (ours - theirs).abs().max() < 1e-2 * ours.abs().max()
