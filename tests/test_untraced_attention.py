"""Fused attention inside a forward torch.fx cannot trace: routed to quantized steps, on integer kernels in
onnxruntime, reloaded exactly."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from conftest import onnx_difference
from lowbit.deploy import export
from lowbit.deploy.runtime import optimized_op_counts
from lowbit.untraced_attention import CHILD, QuantizedAttention, attach_route, calls_fused_attention


class WindowedAttention(nn.Module):
    """Twins' form: attention inside windows of the token map, on 5-d (batch, windows, heads, tokens, width)
    tensors, in a forward that takes the map's size and pads to whole windows only where needed."""

    def __init__(self, dim: int = 16, heads: int = 2, window: int = 2) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w, s = *size, self.window
        x = x.view(b, h, w, c)
        if h % s or w % s:  # a branch on the map size: torch.fx cannot trace it
            x = F.pad(x, (0, 0, 0, (-w) % s, 0, (-h) % s))
        hp, wp = x.shape[1] // s, x.shape[2] // s
        x = x.reshape(b, hp, s, wp, s, c).transpose(2, 3).reshape(b, hp * wp, s * s, c)
        q, k, v = self.qkv(x).reshape(b, hp * wp, s * s, 3, self.heads, c // self.heads).permute(3, 0, 1, 4, 2, 5) \
            .unbind(0)
        x = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, hp, wp, s, s, c)
        x = x.transpose(2, 3).reshape(b, hp * s, wp * s, c)[:, :h, :w].reshape(b, n, c)
        return self.proj(x)


class WindowModel(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.attn = WindowedAttention(dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x)
        size = tokens.shape[-2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        return self.head((tokens + self.attn(tokens, size)).mean(1))


def _model() -> WindowModel:
    torch.manual_seed(0)
    return WindowModel().eval()


@pytest.fixture(scope="module")
def qmodel() -> nn.Module:
    calibration = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with pytest.warns(UserWarning, match="could not trace"):
        return lowbit.quantize(_model(), calibration, weights_bits=8, activation_bits=8)


def test_only_modules_whose_own_forward_calls_fused_attention_are_found():
    model = _model()
    assert calls_fused_attention(model.attn)
    assert not calls_fused_attention(model) and not calls_fused_attention(model.embed)
    assert not calls_fused_attention(nn.MultiheadAttention(8, 2))  # torch's own: lowbit rebuilds it


def test_the_windowed_attention_gets_calibrated_quantizers(qmodel):
    routed = qmodel.attn.get_submodule(CHILD)
    for name in ("query", "key", "value", "probs"):
        quantizer = getattr(routed, f"{name}_quant")
        assert quantizer.state == "quantize" and quantizer.scale.item() != 1.0
    assert routed.probs_quant.zero_point.item() == 0  # probabilities are not negative: an unsigned grid from 0


MASKS = {"float mask": torch.randn(4, 4, generator=torch.Generator().manual_seed(2)),
         "boolean mask": (torch.rand(4, 4, generator=torch.Generator().manual_seed(3)) > 0.3) | torch.eye(4).bool()}


@pytest.mark.parametrize("attention", [{}, {"scale": 0.3}, {"is_causal": True}, {"attn_mask": MASKS["float mask"]},
                                       {"attn_mask": MASKS["boolean mask"]}])
def test_the_steps_compute_what_the_fused_call_computes(attention):
    q, k, v = torch.randn(3, 2, 3, 2, 4, 8, generator=torch.Generator().manual_seed(1))
    steps = QuantizedAttention({})
    torch.testing.assert_close(steps(q, k, v, **attention), F.scaled_dot_product_attention(q, k, v, **attention),
                               rtol=1e-5, atol=1e-6)


def test_the_quantized_model_stays_close_to_float_and_runs_its_attention_on_integers(qmodel, images, tmp_path):
    with torch.no_grad():
        ours, theirs = qmodel(images), _model()(images)
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 0.1
    path = export(qmodel, tmp_path / "w.onnx", images[:2]).path
    counts = optimized_op_counts(path)
    assert counts["MatMul"] + counts["FusedMatMul"] + counts["Gemm"] == 0, counts  # every product on integers
    assert counts["MatMulIntegerToFloat"] + counts["QLinearMatMul"] >= 2, counts  # the two attention products
    assert onnx_difference(qmodel, path, images) < 2e-2


def test_a_saved_model_reloads_exactly(qmodel, images, tmp_path):
    path = lowbit.save(qmodel, tmp_path / "w.lowbit")
    loaded = lowbit.load(path, _model())
    with torch.no_grad():
        assert torch.equal(loaded(images), qmodel(images))


def test_a_copy_routes_to_its_own_quantizers(qmodel, images):
    twin = copy.deepcopy(qmodel)
    with torch.no_grad():
        twin.attn.get_submodule(CHILD).probs_quant.scale *= 4
        assert not torch.equal(twin(images), qmodel(images))


class Failing(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F.scaled_dot_product_attention(x, x, x)
        raise ValueError("after the call")


def test_the_routing_ends_when_forward_raises():
    module = Failing()
    attach_route(module, {})
    with pytest.raises(ValueError):
        module(torch.randn(1, 2, 3, 4))
    assert torch._C._len_torch_function_stack() == 0


class GroupedHeads(nn.Module):
    """Grouped-query attention (4 query heads, 2 key and value heads), which the routed steps leave fused."""

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        kv = q[:, :2]
        return F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = GroupedHeads()

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, q, q) + self.inner(q)


class Doubled(nn.Module):
    """Stands for a quantizer that visibly changes its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_a_routed_module_inside_another_keeps_its_own_calls():
    model = Outer()
    q = torch.randn(1, 4, 3, 8)
    expected = F.scaled_dot_product_attention(2 * q, q, q) + model.inner(q)
    attach_route(model, {"query": Doubled()})  # the outer call's queries doubled, the inner call's not
    attach_route(model.inner, {})
    torch.testing.assert_close(model(q), expected, rtol=1e-5, atol=1e-6)
