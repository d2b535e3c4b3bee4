"""torch's attention modules rebuilt from separate projections: the same function, and quantized end to end."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.attention import SplitMultiheadAttention
from lowbit.coverage import coverage
from lowbit.deploy import export
from lowbit.deploy.runtime import optimized_op_counts


@pytest.mark.parametrize("batch_first, other_dims, bias, unbatched, masks", [
    (True, False, True, False, None), (False, False, True, False, "bool"), (True, True, False, False, "float"),
    (False, True, True, True, "padding"), (True, False, True, True, "bool")])
@pytest.mark.parametrize("need_weights, average", [(True, True), (True, False), (False, True)])
def test_split_attention_computes_what_multihead_attention_does(batch_first, other_dims, bias, unbatched, masks,
                                                                  need_weights, average):
    torch.manual_seed(0)
    embed, heads, target, source, batch = 16, 4, 5, 7, 3
    kdim, vdim = (12, 10) if other_dims else (embed, embed)
    mha = nn.MultiheadAttention(embed, heads, bias=bias, batch_first=batch_first, kdim=kdim, vdim=vdim).eval()

    def sequence(length, dim):
        if unbatched:
            return torch.randn(length, dim)
        return torch.randn(batch, length, dim) if batch_first else torch.randn(length, batch, dim)

    query, key, value = sequence(target, embed), sequence(source, kdim), sequence(source, vdim)
    options = {}
    if masks == "bool":
        options["attn_mask"] = torch.rand(target, source) > 0.7
    elif masks == "float":
        options["attn_mask"] = torch.randn(batch * heads, target, source)
    elif masks == "padding":
        options["key_padding_mask"] = torch.rand(source) > 0.7
    with torch.no_grad():
        expected = mha(query, key, value, need_weights=need_weights, average_attn_weights=average, **options)
        got = SplitMultiheadAttention(mha)(query, key, value, need_weights=need_weights,
                                           average_attn_weights=average, **options)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-5)
    if need_weights:
        torch.testing.assert_close(got[1], expected[1], rtol=0, atol=1e-5)
    else:
        assert got[1] is None


class Tokens(nn.Module):
    """Patch tokens through torch's own attention modules, then a linear head."""

    def __init__(self, body: str) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        if body == "attention":
            self.body = nn.MultiheadAttention(16, 2, batch_first=True)
        else:
            layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True)
            self.body = nn.TransformerEncoder(layer, 2)
            with torch.no_grad():  # the encoder starts its layers as copies of one another
                for p in self.body.layers[1].parameters():
                    p.add_(0.05 * torch.randn_like(p))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        if isinstance(self.body, nn.MultiheadAttention) or hasattr(self.body, "q_proj"):
            tokens = self.body(tokens, tokens, tokens, need_weights=False)[0]
        else:
            tokens = self.body(tokens)
        return self.head(tokens.mean(1))


@pytest.mark.parametrize("body, projections, attention_matmuls", [("attention", 4, 2), ("encoder", 12, 4)])
def test_models_on_torch_attention_are_quantized_and_run_on_integers(body, projections, attention_matmuls, tmp_path):
    """Every projection of torch's attention (and the encoder layers' feed-forward layers) gets integer weights,
    the model stays one traced graph, reloads exactly and runs its projections on onnxruntime's integer kernels."""
    torch.manual_seed(0)
    model, x = Tokens(body).eval(), torch.rand(32, 3, 16, 16)
    qmodel = lowbit.quantize(model, x, weights_bits=8, activation_bits=8)
    assert qmodel.lowbit_info.mode == "fx"
    share = coverage(qmodel)
    assert share.unquantized == {} and share.float_fraction < 0.1, share.describe()
    with torch.no_grad():
        ours, float_out = qmodel(x), model(x)
    assert (ours - float_out).abs().max() < 0.05 * float_out.abs().max()
    lowbit.save(qmodel, tmp_path / "m.lowbit")
    with torch.no_grad():
        assert torch.equal(lowbit.load(str(tmp_path / "m.lowbit"), Tokens(body).eval())(x), ours)
    path = export(qmodel, tmp_path / "m.onnx", x[:2]).path
    counts = optimized_op_counts(path)
    assert counts["MatMulIntegerToFloat"] == projections and counts["QLinearMatMul"] == attention_matmuls, counts
    assert counts["MatMul"] + counts["FusedMatMul"] == 0, counts
