"""Weights read zero points of their own, so onnxruntime's exact-product option loads the file; lowbit's sessions
compute 8-bit weights exactly on every x86 CPU."""

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

import lowbit
from lowbit.deploy import export
from lowbit.deploy.runtime import OnnxClassifier
from lowbit.deploy.unshared_grids import unshare_weight_grids


def dequantize(codes: str, zero_point: str, out: str) -> onnx.NodeProto:
    return helper.make_node("DequantizeLinear", [codes, "scale", zero_point], [out], axis=0)


def test_weights_sharing_a_zero_point_get_copies_and_activations_keep_theirs():
    zeros = numpy_helper.from_array(np.zeros(2, np.int8), "zp")
    graph = helper.make_graph(
        [dequantize("w1", "zp", "a"), dequantize("w2", "zp", "b"),
         helper.make_node("DequantizeLinear", ["x", "act_scale", "act_zp"], ["c"]),
         helper.make_node("DequantizeLinear", ["y", "act_scale", "act_zp"], ["d"])],
        "g", [helper.make_tensor_value_info(n, onnx.TensorProto.UINT8, [2]) for n in ("x", "y")],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2]) for n in "abcd"],
        [numpy_helper.from_array(np.array([1, -3], np.int8), "w1"), numpy_helper.from_array(np.array([4, 2], np.int8), "w2"),
         numpy_helper.from_array(np.ones(2, np.float32), "scale"), zeros,
         numpy_helper.from_array(np.float32(0.1), "act_scale"), numpy_helper.from_array(np.uint8(3), "act_zp")])
    assert unshare_weight_grids(graph) == 1
    first, second, act1, act2 = graph.node
    assert first.input[2] == "zp" and second.input[2] not in ("zp", "")
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    assert np.array_equal(values[second.input[2]], values["zp"])
    assert act1.input[2] == act2.input[2] == "act_zp"  # read by activations, which the conversion leaves alone
    assert unshare_weight_grids(graph) == 0


def test_no_exported_weight_shares_its_codes_or_zero_point(residual_net, images, tmp_path):
    qmodel = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=8)
    graph = onnx.load(str(export(qmodel, tmp_path / "m.onnx", images[:2]).path)).graph
    int8 = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.INT8}
    weight_reads = [name for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] in int8
                    for name in (node.input[0], node.input[2])]
    assert len(weight_reads) > 2 and len(set(weight_reads)) == len(weight_reads)


def test_products_that_saturate_16_bit_pair_sums_are_exact_in_lowbits_sessions(tmp_path):
    """Inputs at the top of a uint8 grid times weights at the top of an int8 grid: each pair of products exceeds
    a 16-bit sum, which onnxruntime's kernels on x86 CPUs without VNNI would saturate."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1))
    with torch.no_grad():
        model[1].weight.fill_(0.5)
        model[1].bias.zero_()
    calibration = torch.rand(64, 16)
    calibration[0] = 1.0
    qmodel = lowbit.quantize(model, calibration, weights_bits=8, activation_bits=8)
    ones = torch.ones(4, 16)
    with torch.no_grad():
        ours = qmodel(ones)
    theirs = OnnxClassifier(export(qmodel, tmp_path / "m.onnx", ones[:2]).path)(ones)
    assert ours.min() > 7.5  # the float model gives 8
    assert torch.allclose(theirs, ours, atol=1e-3), (theirs, ours)
