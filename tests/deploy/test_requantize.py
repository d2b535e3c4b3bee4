"""Quantized activations that reach a layer through data movement: the layer still runs on integers."""

import onnx
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.deploy import export
from lowbit.deploy.runtime import OnnxClassifier, optimized_op_counts


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
    with torch.no_grad():
        ours = qmodel(images)
    theirs = OnnxClassifier(path)(images)
    assert (ours - theirs).abs().max() < 1e-2 * ours.abs().max()


class GroupedHeadAttention(nn.Module):
    """Attention through ``scaled_dot_product_attention`` with grouped-query heads, which lowbit keeps as one call
    and the exporter writes with the queries and keys each multiplied by ``d ** -0.25`` before their matmul."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        b, n, c = tokens.shape
        q, k, v = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        mixed = F.scaled_dot_product_attention(q, k, v, enable_gqa=True).transpose(1, 2).reshape(b, n, c)
        return self.head(self.proj(mixed).mean(1))


def test_scaled_queries_and_keys_meet_on_integers(images, tmp_path):
    torch.manual_seed(0)
    qmodel = lowbit.quantize(GroupedHeadAttention().eval(), images, weights_bits=8, activation_bits=8)
    path = export(qmodel, tmp_path / "a.onnx", images[:2]).path
    counts = optimized_op_counts(path)
    # qkv, proj and the queries-times-keys product on integers; the softmax output stays float inside the
    # fused call (lowbit quantizes its inputs and output only), so its product with the values does too
    assert counts["MatMulIntegerToFloat"] + counts["QLinearMatMul"] == 3, counts
    assert counts["MatMul"] + counts["FusedMatMul"] == 1, counts
    with torch.no_grad():
        ours = qmodel(images)
    theirs = OnnxClassifier(path)(images)
    assert (ours - theirs).abs().max() < 1e-2 * ours.abs().max()
