"""Where a traced graph's activations are requantized (the general placement is checked through prepare in
test_graph.py)."""

from lowbit.config import QuantConfig
from lowbit.graph import layer_input_quantizers, prepare
from lowbit.layers import quant_layers


def _quantized_values(qmodel) -> set[str]:
    """The graph names of the values the activation quantizers read."""
    return {node.args[0].name for node in qmodel.graph.nodes
            if node.op == "call_module" and str(node.target).startswith("act_quant.")}


def test_a_float_residual_stream_leaves_only_the_transformer_sums_unquantized(tiny_vit, residual_net):
    """The sums that reach only norms and further adds lose their grids; every linear layer still reads a quantized
    input, and a CNN's adds, which convolutions read (after a ReLU), keep theirs."""
    default = _quantized_values(prepare(tiny_vit, QuantConfig.from_bits(8, 8)))
    stream = prepare(tiny_vit, QuantConfig.from_bits(8, 8, float_residual_stream=True))
    sums = {"add", "add_1", "add_2", "add_3", "add_4"}  # position embedding, then two per block
    assert sums <= default and default - _quantized_values(stream) == sums
    layers = {name for name, _ in quant_layers(stream)}
    assert layers - {"embed"} <= layer_input_quantizers(stream).keys()
    cnn = prepare(residual_net, QuantConfig.from_bits(8, 8, float_residual_stream=True))
    assert _quantized_values(cnn) == _quantized_values(prepare(residual_net, QuantConfig.from_bits(8, 8)))
