"""Attention within windows (5-d queries, keys and values) exports to ONNX and runs in onnxruntime."""

import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.deploy import export, export_float
from lowbit.deploy.runtime import session_options


class WindowedAttention(nn.Module):
    """Attention inside each window, heads split out: the fused call sees (batch, windows, heads, tokens, width),
    as in timm's Twins; ``mask`` adds a float bias or keeps the positions a boolean mask marks."""

    def __init__(self, mask: str | None = None) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)
        self.mask = mask
        bias = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
        self.register_buffer("bias", bias if mask == "float" else bias > -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return attend(x, self.qkv, self.proj, self.bias if self.mask else None)


def attend(x: torch.Tensor, qkv: nn.Linear, proj: nn.Linear, mask: torch.Tensor | None = None) -> torch.Tensor:
    b, w, t, c = x.shape
    q, k, v = qkv(x).reshape(b, w, t, 3, 2, c // 2).permute(3, 0, 1, 4, 2, 5).unbind(0)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return proj(y.transpose(2, 3).reshape(b, w, t, c))


class Classifier(nn.Module):
    """The attention in a forward torch.fx cannot trace (a branch on the input's size), so the fused call stays
    in the quantized model rather than being written out in a traced graph."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj, self.head = nn.Linear(8, 24), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 4:
            x = attend(x, self.qkv, self.proj)
        return self.head(x.mean((1, 2)))


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.parametrize("mask", [None, "float", "bool"])
def test_five_dimensional_attention_exports_and_computes_the_same(tmp_path, mask):
    torch.manual_seed(0)
    model = WindowedAttention(mask).eval()
    x = torch.randn(2, 3, 4, 8)
    path = export_float(model, tmp_path / "m.onnx", x[:1])
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(path, x), model(x), rtol=1e-4, atol=1e-5)


def test_a_quantized_model_keeping_the_fused_call_exports(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(32, 3, 4, 8)
    with pytest.warns(UserWarning):
        qmodel = lowbit.quantize(Classifier().eval(), x, weights_bits=8, activation_bits=8)
    path = export(qmodel, tmp_path / "q.onnx", x[:2]).path
    with torch.no_grad():
        ours = qmodel(x)
    assert (ours - run_onnx(path, x)).abs().max() < 0.05 * ours.abs().max()
