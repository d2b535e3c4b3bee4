"""A mean over the tokens of a dequantized sequence, rewritten in 4-d form: same values, and OpenVINO gets them."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowbit.deploy.openvino_check import compile_openvino
from lowbit.deploy.token_mean import reduce_tokens_in_4d


def pooled_sequence(op: str, keepdims: int, zero_point: int) -> onnx.ModelProto:
    """Quantize-dequantize a (batch, tokens, channels) input, then reduce it over the tokens."""
    inits = [numpy_helper.from_array(np.array(0.01, np.float32), "scale"),
             numpy_helper.from_array(np.array(zero_point, np.uint8), "zero_point"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["codes"]),
             helper.make_node("DequantizeLinear", ["codes", "scale", "zero_point"], ["tokens"]),
             helper.make_node(op, ["tokens", "axes"], ["y"], keepdims=keepdims)]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1, 16] if keepdims else [4, 16])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("op, keepdims, zero_point", [("ReduceMean", 0, 128), ("ReduceMean", 1, 0),
                                                      ("ReduceSum", 0, 128)])
def test_token_reductions_keep_their_values_and_openvino_computes_them(op, keepdims, zero_point, tmp_path):
    x = np.random.default_rng(0).uniform(-1.2 if zero_point else 0.0, 1.2, (4, 64, 16)).astype(np.float32)
    original = pooled_sequence(op, keepdims, zero_point)
    rewritten = pooled_sequence(op, keepdims, zero_point)
    assert reduce_tokens_in_4d(rewritten) == 1
    onnx.checker.check_model(rewritten, full_check=True)
    results = {}
    for name, proto in (("original", original), ("rewritten", rewritten)):
        path = tmp_path / f"{name}.onnx"
        onnx.save(proto, str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        results[name] = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(results["rewritten"], results["original"], rtol=1e-6, atol=1e-6)
    openvino = compile_openvino(tmp_path / "rewritten.onnx")[0](x)[0]
    np.testing.assert_allclose(openvino, results["original"], rtol=1e-5, atol=1e-5)


def test_other_reductions_are_left_alone():
    proto = pooled_sequence("ReduceMean", 0, 128)
    proto.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array([2], np.int64), "axes"))
    assert reduce_tokens_in_4d(proto) == 0
