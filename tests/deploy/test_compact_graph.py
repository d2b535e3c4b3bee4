"""What the exporter writes that runtimes do not read, left out: names of linking values here (debugging records
and repeated defaults are checked on a whole export in test_onnx_export.py)."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from lowbit.deploy.compact_graph import drop_unused_initializers, shorten_names


def test_short_names_skip_initializer_names_and_keep_the_graph_interface():
    """Linking values get a counter that never takes an initializer's name (an initializer named "0" here), node
    names go, and the graph's input, output and initializers keep theirs: the file computes the same."""
    helper = onnx.helper
    zero = numpy_helper.from_array(np.array([2.0], np.float32), "0")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "0"], ["scaled_by_two"], name="node_mul"),
         helper.make_node("Relu", ["scaled_by_two"], ["rectified"], name="node_relu"),
         helper.make_node("Add", ["rectified", "0"], ["y"], name="node_add")], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3])], [zero])
    shorten_names(graph)
    assert [n.name for n in graph.node] == ["", "", ""]
    assert [list(n.output) for n in graph.node] == [["1"], ["2"], ["y"]]
    assert list(graph.node[0].input) == ["x", "0"] and list(graph.node[2].input) == ["2", "0"]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": np.array([-1.0, 0.5, 2.0], np.float32)})[0]
    np.testing.assert_array_equal(out, np.array([2.0, 3.0, 6.0], np.float32))


def test_initializers_no_node_reads_are_dropped():
    helper = onnx.helper
    inits = [numpy_helper.from_array(np.array([2.0], np.float32), name) for name in ("two", "stale", "out")]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [1])], inits)
    assert drop_unused_initializers(graph) == 1
    assert [init.name for init in graph.initializer] == ["two", "out"]  # a graph output may be an initializer
