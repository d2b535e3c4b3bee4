"""lowbit's QDQ files in a second runtime: OpenVINO reads them, runs the layers on integers and agrees with lowbit."""

import openvino
import pytest
import torch

import lowbit
from lowbit.deploy import export

INTEGER_PRECISIONS = {"u8", "i8"}


def compiled_layers(path):
    """OpenVINO's compiled model (float parts in f32) and the runtime precision of each convolution/matmul."""
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    precisions = [op.get_rt_info()["runtimePrecision"].astype(str)
                  for op in compiled.get_runtime_model().get_ordered_ops()
                  if op.get_rt_info()["layerType"].astype(str) in ("Convolution", "FullyConnected", "MatMul")]
    return compiled, precisions


@pytest.mark.parametrize("weights_bits", [8, 4])
def test_openvino_runs_signed_weight_files_on_integers(residual_net, images, tmp_path, weights_bits):
    qmodel = lowbit.quantize(residual_net, images, weights_bits=weights_bits, activation_bits=8)
    path = export(qmodel, tmp_path / "m.onnx", images[:2], signed_weights=True).path
    compiled, precisions = compiled_layers(path)
    assert precisions and set(precisions) <= INTEGER_PRECISIONS, precisions
    with torch.no_grad():
        ours = qmodel(images)
    theirs = torch.from_numpy(compiled(images.numpy())[0])
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() >= 0.95
    assert (ours - theirs).abs().max() < 0.05 * ours.abs().max()
