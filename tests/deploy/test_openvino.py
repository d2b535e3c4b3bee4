"""lowbit's QDQ files in a second runtime: OpenVINO reads them, runs the layers on integers and agrees with lowbit."""

import sys

import pytest
import torch

import lowbit
from lowbit.deploy import export
from lowbit.errors import LowbitError
from lowbit.deploy.openvino_check import INTEGER_PRECISIONS, compile_openvino

from conftest import openvino_exact_weight_bits


@pytest.mark.parametrize("weights_bits", [openvino_exact_weight_bits(), 4])
def test_openvino_runs_signed_weight_files_on_integers(residual_net, images, tmp_path, weights_bits):
    qmodel = lowbit.quantize(residual_net, images, weights_bits=weights_bits, activation_bits=8)
    path = export(qmodel, tmp_path / "m.onnx", images[:2], signed_weights=True).path
    compiled, precisions = compile_openvino(path)
    assert precisions and set(precisions) <= INTEGER_PRECISIONS, precisions
    with torch.no_grad():
        ours = qmodel(images)
    theirs = torch.from_numpy(compiled(images.numpy())[0])
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() >= 0.95
    assert (ours - theirs).abs().max() < 0.05 * ours.abs().max()


def test_missing_openvino_is_one_line_naming_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what an environment without it imports
    with pytest.raises(LowbitError, match="pip install openvino"):
        compile_openvino(tmp_path / "m.onnx")


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_openvino_reads_copying_padding_modes(mode, tmp_path):
    """Circular padding is written as slices and a Concat: OpenVINO's ONNX reader has no Pad mode "wrap"."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode=mode), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3, padding=(1, 2), padding_mode=mode), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 10, 5)).eval()
    x = torch.rand(32, 3, 8, 8)
    qmodel = lowbit.quantize(model, x, weights_bits=openvino_exact_weight_bits(), activation_bits=8)
    compiled, precisions = compile_openvino(export(qmodel, tmp_path / "m.onnx", x[:2]).path)
    assert precisions and set(precisions) <= INTEGER_PRECISIONS, precisions
    with torch.no_grad():
        ours = qmodel(x)
    theirs = torch.from_numpy(compiled(x.numpy())[0])
    assert (ours - theirs).abs().max() < 0.05 * ours.abs().max()

