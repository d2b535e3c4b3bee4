"""Fused attention written out in the traced graph: the same function, its probabilities quantized, both
attention products on integer kernels in onnxruntime."""

import pytest
import torch
import torch.nn.functional as F

import lowbit
from conftest import FusedAttention, onnx_difference
from lowbit.deploy import export
from lowbit.deploy.runtime import optimized_op_counts
from lowbit.fused_attention import attention_probabilities, write_out_fused_attention
from lowbit.tracing import trace


def calls(gm: torch.fx.GraphModule, target: object) -> int:
    return sum(n.op == "call_function" and n.target is target for n in gm.graph.nodes)


MASKS = {"float mask": torch.randn(16, 16, generator=torch.Generator().manual_seed(2)),
         "boolean mask": torch.rand(16, 16, generator=torch.Generator().manual_seed(3)) > 0.3}


@pytest.mark.parametrize("attention", [{}, {"scale": 0.3}, {"is_causal": True}, {"attn_mask": MASKS["float mask"]},
                                       {"attn_mask": MASKS["boolean mask"] | torch.eye(16, dtype=torch.bool)}])
def test_written_out_attention_computes_what_the_fused_call_computes(images, attention):
    torch.manual_seed(0)
    model = FusedAttention(**attention).eval()
    gm = trace(model)
    assert write_out_fused_attention(gm) == 1
    assert calls(gm, F.scaled_dot_product_attention) == 0 and calls(gm, attention_probabilities) == 1
    with torch.no_grad():
        torch.testing.assert_close(gm(images), model(images), rtol=1e-5, atol=1e-6)


class OptionalMask(FusedAttention):
    """timm's form: the block takes an optional mask and causal flag and passes them on."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        self.attention = {"attn_mask": attn_mask, "is_causal": is_causal}
        return super().forward(x)


def test_a_mask_or_causal_flag_given_at_run_time_still_applies(images):
    torch.manual_seed(0)
    model = OptionalMask().eval()
    gm = trace(model)
    assert write_out_fused_attention(gm) == 1
    with torch.no_grad():
        torch.testing.assert_close(gm(images), model(images), rtol=1e-5, atol=1e-6)
        mask = MASKS["float mask"]
        torch.testing.assert_close(gm(images, mask), model(images, mask), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gm(images, None, True), model(images, None, True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", [{"dropout_p": 0.1}, {"enable_gqa": True}])
def test_dropout_or_grouped_heads_keep_the_fused_call(attention):
    gm = trace(FusedAttention(**attention).eval())
    assert write_out_fused_attention(gm) == 0
    assert calls(gm, F.scaled_dot_product_attention) == 1


def test_the_probabilities_are_quantized_and_both_products_run_on_integers(images, tmp_path):
    torch.manual_seed(0)
    qmodel = lowbit.quantize(FusedAttention().eval(), images, weights_bits=8, activation_bits=8)
    readers = [n for n in qmodel.graph.nodes if n.op == "call_module" and n.args
               and getattr(n.args[0], "target", None) is attention_probabilities]
    assert len(readers) == 1 and readers[0].target.startswith("act_quant")
    path = export(qmodel, tmp_path / "a.onnx", images[:2]).path
    counts = optimized_op_counts(path)
    # qkv, proj, queries x keys and probabilities x values
    assert counts["MatMulIntegerToFloat"] + counts["QLinearMatMul"] == 4, counts
    assert counts["MatMul"] + counts["FusedMatMul"] == 0, counts
    assert onnx_difference(qmodel, path, images) < 1e-2


def test_a_saved_model_reloads_exactly_with_its_probabilities_grid(images, tmp_path):
    torch.manual_seed(0)
    qmodel = lowbit.quantize(FusedAttention().eval(), images, weights_bits=8, activation_bits=8)
    loaded = lowbit.load(lowbit.save(qmodel, tmp_path / "a.lowbit"), FusedAttention().eval())
    with torch.no_grad():
        assert torch.equal(loaded(images), qmodel(images))
