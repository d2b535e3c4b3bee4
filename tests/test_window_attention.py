"""torchvision's Swin attention rebuilt with its projections as layers: the same function, its weights and
both attention products quantized, and on integer kernels in onnxruntime."""

import pytest
import torch
from torchvision.models.swin_transformer import (PatchMergingV2, ShiftedWindowAttention, ShiftedWindowAttentionV2,
                                                 SwinTransformer, SwinTransformerBlockV2)

import lowbit
from conftest import onnx_difference
from lowbit.coverage import coverage
from lowbit.deploy import export
from lowbit.deploy.runtime import optimized_op_counts
from lowbit.layers import QuantLayer
from lowbit.window_attention import rebuild_window_attention


def tiny_swin(version: int = 1) -> SwinTransformer:
    """Two stages of two blocks: shifted windows in the first stage; in the second one window covers the map."""
    torch.manual_seed(0)
    v2 = {"block": SwinTransformerBlockV2, "downsample_layer": PatchMergingV2} if version == 2 else {}
    model = SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                            num_classes=5, **v2).eval()
    with torch.no_grad():  # torchvision starts some of these at zero; random values test that each is applied
        for m in model.modules():
            if isinstance(m, ShiftedWindowAttentionV2):
                m.logit_scale.uniform_(0.5, 3.0)
                m.qkv.bias.normal_()  # V2 zeroes the keys' part of it at every call
                m.cpb_mlp[-1].weight.normal_()
            elif isinstance(m, ShiftedWindowAttention):
                m.relative_position_bias_table.normal_()
    return model


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("side", [32, 24])  # 24: the 6x6 token map is padded to whole 4x4 windows
def test_rebuilt_attention_computes_what_torchvision_computes(side, version):
    model = tiny_swin(version)
    x = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        assert rebuild_window_attention(model) == 4
        assert not any(isinstance(m, ShiftedWindowAttention) for m in model.modules())
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", [1, 2])
def test_the_projections_and_both_products_run_on_integers(tmp_path, version):
    model = tiny_swin(version)
    images = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    qmodel = lowbit.quantize(model, images, weights_bits=8, activation_bits=8)
    projections = [n for n, m in qmodel.named_modules() if isinstance(m, QuantLayer) and n.endswith(("qkv", "proj"))]
    assert len(projections) == 8
    # only V1's position bias tables or V2's temperatures stay float
    kept = sum((m.logit_scale if version == 2 else m.relative_position_bias_table).numel()
               for m in model.modules() if isinstance(m, ShiftedWindowAttention))
    assert sum(coverage(qmodel).unquantized.values()) == kept
    path = export(qmodel, tmp_path / "swin.onnx", images[:2]).path
    counts = optimized_op_counts(path)
    # per block: qkv, proj, queries x keys, probabilities x values; and the patch merging and the head
    assert counts["MatMulIntegerToFloat"] + counts["QLinearMatMul"] + counts["QGemm"] >= 4 * 4, counts
    assert counts["MatMul"] + counts["FusedMatMul"] + counts["Gemm"] == 0, counts
    assert onnx_difference(qmodel, path, images) < 2e-2


@pytest.mark.parametrize("version", [1, 2])
def test_a_saved_swin_reloads_exactly_into_an_architecture_with_other_weights(tmp_path, version):
    """V2's position bias is computed from the float weights when the model is prepared: the file's copy, not
    the architecture's, must be the one used after loading."""
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    qmodel = lowbit.quantize(tiny_swin(version), images, weights_bits=8, activation_bits=8)
    path = lowbit.save(qmodel, tmp_path / "swin.lowbit")
    other = tiny_swin(version)
    with torch.no_grad():
        for p in other.parameters():
            p.normal_()
    loaded = lowbit.load(path, other)
    with torch.no_grad():
        assert torch.equal(loaded(images), qmodel(images))
