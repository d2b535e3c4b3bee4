"""Quantized activations that reach a layer through data movement: the layer still runs on integers."""

import onnx
import torch
from torch import nn

import lowbit
from conftest import FusedAttention, onnx_difference
from lowbit.deploy import export
from lowbit.deploy.runtime import optimized_op_counts


class FirstToken(nn.Module):
    """A transformer's classifier head: the first token taken out of the sequence, then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.embed(x).flatten(2).transpose(1, 2))
        return self.head(tokens[:, 0])


def test_a_head_reading_a_selected_token_runs_on_integers(images, tmp_path):
    torch.manual_seed(0)
    qmodel = lowbit.quantize(FirstToken().eval(), images, weights_bits=8, activation_bits=8)
    path = export(qmodel, tmp_path / "t.onnx", images[:2]).path
    assert "Gather" in {n.op_type for n in onnx.load(str(path)).graph.node}  # the token is selected after its grid
    counts = optimized_op_counts(path)
    assert counts["QGemm"] == 1 and counts["Gemm"] == 0, counts
    assert onnx_difference(qmodel, path, images) < 1e-2


def test_scaled_queries_and_keys_meet_on_integers(images, tmp_path):
    torch.manual_seed(0)
    qmodel = lowbit.quantize(FusedAttention(enable_gqa=True).eval(), images, weights_bits=8, activation_bits=8)
    path = export(qmodel, tmp_path / "a.onnx", images[:2]).path
    counts = optimized_op_counts(path)
    # attention with grouped-query heads stays one call, which the exporter writes with the queries and keys each
    # multiplied by d ** -0.25 before their matmul: qkv, proj and the queries-times-keys product on integers; the
    # softmax output stays float inside the call (lowbit quantizes its inputs and output only), so its product
    # with the values does too
    assert counts["MatMulIntegerToFloat"] + counts["QLinearMatMul"] == 3, counts
    assert counts["MatMul"] + counts["FusedMatMul"] == 1, counts
    assert onnx_difference(qmodel, path, images) < 1e-2
