import warnings

import pytest
import torch
from torch import fx, nn

import lowbit
from conftest import ResidualNet, TinyViT, randomize_bn
from lowbit import LowbitError, Override
from lowbit.calibrate import calibrate, calibrate_weights, freeze
from lowbit.config import QuantConfig
from lowbit.coverage import coverage
from lowbit.graph import activation_quantizers, layer_input_quantizers, prepare
from lowbit.layers import QConv2d, QLinear, quant_layers


def test_prepare_leaves_original_model_untouched(residual_net):
    before = {k: v.clone() for k, v in residual_net.state_dict().items()}
    prepare(residual_net, QuantConfig.from_bits(4, 4))
    assert all(torch.equal(before[k], v) for k, v in residual_net.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in residual_net.modules())


def _requant_sources(qmodel) -> dict[str, str]:
    """Map each activation quantizer to the op whose output it quantizes."""
    out = {}
    for node in qmodel.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith("act_quant."):
            src = node.args[0]
            out[node.target] = src.op if src.op in ("placeholder",) else str(src.target)
    return out


def test_activation_quantizers_at_requantization_points(residual_net):
    q = prepare(residual_net, QuantConfig.from_bits(8, 8))
    sources = set(_requant_sources(q).values())
    assert "placeholder" in sources                 # model input
    assert "b1.2" in sources                        # conv+BN+ReLU fused: after the ReLU
    assert "b1.3" in sources                        # conv output before the residual add
    assert "relu" in sources                        # add+ReLU: after the ReLU
    assert any("cat" in s for s in sources)         # concatenation
    assert any("mean" in s for s in sources)        # pooled features feeding the head
    assert all(isinstance(m, (QConv2d, QLinear)) for m in q.modules() if type(m) in (nn.Conv2d, nn.Linear))


def test_vit_attention_matmuls_and_norm_outputs_are_quantized(tiny_vit):
    q = prepare(tiny_vit, QuantConfig.from_bits(8, 8))
    sources = list(_requant_sources(q).values())
    assert sum("matmul" in s for s in sources) == 4  # q@k and attn@v in two blocks
    assert any("norm1" in s for s in sources) and any("act" in s for s in sources)  # LayerNorm, GELU feed linears
    assert any("softmax" in s for s in sources)


def test_an_override_keeps_one_activation_float_by_its_quantizer_path(residual_net):
    """The documented name of an activation quantizer ("act_quant.head", or "head.input_quant" when layers are
    swapped) is a name an override may keep float, though that quantizer is then never made."""
    keep = QuantConfig.from_bits(8, 8, overrides=(Override("act_quant.head", keep_float=True),))
    names = {n for n, _ in activation_quantizers(prepare(residual_net, keep))}
    assert "act_quant.mean" in names and "act_quant.head" not in names
    assert names == {n for n, _ in activation_quantizers(prepare(residual_net, QuantConfig.from_bits(8, 8)))} - {
        "act_quant.head"}
    swapped = prepare(residual_net, QuantConfig.from_bits(8, 8, overrides=(
        Override("head.input_quant", keep_float=True),)), mode="swap")
    assert swapped.head.input_quant is None and swapped.b1[0].input_quant is not None
    assert isinstance(swapped.head, QLinear)  # its weights are still quantized


@pytest.mark.parametrize("make", [lambda: randomize_bn(ResidualNet()), lambda: TinyViT().eval()])
def test_8bit_stays_close_to_float(make, device):
    torch.manual_seed(0)
    model = make().to(device)
    x = torch.randn(32, model.embed.in_channels if hasattr(model, "embed") else 3, 16, 16, device=device)
    q = prepare(model, QuantConfig.from_bits(8, 8))
    calibrate(q, [x[:16], x[16:]])
    freeze(q)
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert (out - ref).norm() / ref.norm() < 0.05


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow breaks symbolic tracing
            x = x * 2
        return self.fc(self.conv(x).mean((2, 3)))


def test_untraceable_model_falls_back_with_one_warning(images):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = prepare(Untraceable(), QuantConfig.from_bits(8, 8))
    messages = [str(w.message) for w in caught if "torch.fx could not trace" in str(w.message)]
    assert len(messages) == 1 and "Untraceable" in messages[0] and "module swapping" in messages[0]
    assert q.lowbit_info.mode == "swap"
    layers = dict(quant_layers(q))
    assert set(layers) == {"conv", "fc"} and all(l.input_quant is not None for l in layers.values())
    calibrate(q, [images])
    freeze(q)
    assert torch.isfinite(q(images)).all()


def test_weights_only_config_places_no_activation_quantizers(residual_net):
    q = prepare(residual_net, QuantConfig.from_bits(4, None))
    assert activation_quantizers(q) == []
    assert isinstance(q, fx.GraphModule)


def tensor_devices(model: nn.Module) -> set[torch.device]:
    return {t.device for t in [*model.parameters(), *model.buffers()]}


@pytest.mark.parametrize("make", [lambda: randomize_bn(ResidualNet()), Untraceable], ids=["fx", "swap"])
def test_every_grid_stays_on_the_model_device(make):
    """A model on the meta device stands in for one on a GPU: any grid made on the CPU shows up here."""
    meta = {torch.device("meta")}
    config = QuantConfig.from_bits(4, 8, weights_observer="minmax")  # the MSE search is slow on meta tensors
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untraceable model's fallback warning is tested above
        q = prepare(make().to("meta"), config)
    assert activation_quantizers(q) and tensor_devices(q) == meta
    calibrate_weights(q)
    assert tensor_devices(q) == meta
    for _, aq in activation_quantizers(q):  # grids arrive from observers and files on the CPU
        aq.set_qparams(torch.tensor([0.1]), torch.tensor([3]))
    freeze(q)
    assert all(layer.frozen for _, layer in quant_layers(q))
    assert tensor_devices(q) == meta


def test_a_quantized_model_is_not_quantized_again(residual_net, images):
    q = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=8)
    with pytest.raises(LowbitError, match="already quantized"):
        lowbit.quantize(q, images)


def test_a_model_without_weight_layers_is_a_clear_error(images):
    with pytest.raises(LowbitError, match="no layer lowbit quantizes"):
        lowbit.quantize(nn.Sequential(nn.ReLU(), nn.Flatten()), images)


def test_sizes_computed_from_shapes_get_no_activation_quantizer(recwarn):
    """``h * w`` in a reshape is an integer: a quantizer there would never see a tensor (and warn that it saw
    no calibration data); the tensors around it are still quantized."""

    class Rows(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(16 * 16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            n, c, h, w = y.shape
            return self.fc(y.reshape(n, c, h * w))

    q = lowbit.quantize(Rows().eval(), torch.randn(16, 3, 16, 16), weights_bits=8, activation_bits=8)
    names = {n for n, _ in activation_quantizers(q)}
    assert not any("mul" in n for n in names), names
    assert {"act_quant.x", "act_quant.conv"} <= names
    assert not [w for w in recwarn if "saw no calibration data" in str(w.message)]


def test_residual_bits_widen_only_the_branches_summed_by_an_add(residual_net, images):
    """The last convolution of each block and the projection shortcut feed an add and take ``residual_bits``;
    every other activation (ReLU outputs, the branch concatenated instead of added) keeps the default."""
    q = lowbit.quantize(residual_net, images, weights_bits=2, activation_bits=2, residual_bits=8)
    bits = {n.removeprefix("act_quant."): m.spec.bits for n, m in activation_quantizers(q)}
    assert {n for n, b in bits.items() if b == 8} == {"b1_3", "b2_3", "proj_0"}
    assert bits["side"] == 2 and bits["relu"] == 2


def test_residual_bits_on_a_model_without_residual_adds_is_refused(images):
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    with pytest.raises(LowbitError, match="no weight layer of this model feeds a residual add"):
        lowbit.quantize(net, images, weights_bits=2, activation_bits=2, residual_bits=8)


class OpaqueBlock(nn.Module):
    """A stem, one of timm's MobileViT blocks (which torch.fx cannot trace, so it stays one opaque call) and a
    head through timm's own ``Linear``."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import Linear
        from timm.models.mobilevit import MobileVitBlock

        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = MobileVitBlock(16, 16, transformer_dim=32, transformer_depth=1, patch_size=2, num_heads=2)
        self.head = Linear(16, 5)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.stem(x))).mean((2, 3)))


def test_layers_inside_opaque_modules_and_timm_linear_are_quantized(tmp_path):
    """The traced graph calls the MobileViT block as a whole; inside it, the parts that trace (its transformer, its
    conv-norm-act layers) are quantized as graphs and the other layers swapped with their own input quantizers,
    and timm's Linear head is quantized like nn.Linear."""
    torch.manual_seed(0)
    model, x = OpaqueBlock().eval(), torch.rand(16, 3, 8, 8)
    qmodel = lowbit.quantize(model, x, weights_bits=8, activation_bits=8)
    assert qmodel.lowbit_info.mode == "fx"
    assert "block" in {n.target for n in qmodel.graph.nodes if n.op == "call_module"}
    share = coverage(qmodel)
    assert share.unquantized == {} and share.float_fraction < 0.05, share.describe()
    inner = [name for name, _ in quant_layers(qmodel) if name.startswith("block.")]
    inputs = layer_input_quantizers(qmodel)
    assert len(inner) >= 6 and set(inner) <= set(inputs)  # every one reads a quantized input
    assert isinstance(qmodel.block.transformer, fx.GraphModule)  # its matmuls and their inputs quantized too
    assert inputs["block.transformer.0.attn.proj"] == "block.transformer.act_quant.matmul_1"
    assert qmodel.block.conv_1x1.input_quant is not None
    with torch.no_grad():
        ours, float_out = qmodel(x), model(x)
    assert (ours - float_out).abs().max() < 0.05 * float_out.abs().max()
    lowbit.save(qmodel, tmp_path / "m.lowbit")
    with torch.no_grad():
        assert torch.equal(lowbit.load(str(tmp_path / "m.lowbit"), OpaqueBlock().eval())(x), ours)


class MethodNamedValues(nn.Module):
    """A value torch.fx names after a method of a module dict ("to") that feeds a weight layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 5)

    def forward(self, x):
        y = self.conv(x).mean((2, 3))
        return self.fc(y.to(torch.float32))


def test_values_named_like_module_methods_get_quantizers(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    qmodel = lowbit.quantize(MethodNamedValues().eval(), x, weights_bits=8, activation_bits=8)
    names = {name for name, _ in activation_quantizers(qmodel)}
    assert "act_quant.to_value" in names, names
    lowbit.save(qmodel, tmp_path / "m.lowbit")
    with torch.no_grad():
        assert torch.equal(lowbit.load(str(tmp_path / "m.lowbit"), MethodNamedValues().eval())(x), qmodel(x))


class NormFree(nn.Module):
    """One of NFNet's blocks, which timm lists as untraceable although it traces on its own."""

    def __init__(self) -> None:
        super().__init__()
        from timm.models.nfnet import NormFreeBlock

        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = NormFreeBlock(16, 16, act_layer=nn.ReLU)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def test_modules_timm_lists_as_untraceable_are_traced_when_they_trace():
    torch.manual_seed(0)
    model, x = NormFree().eval(), torch.rand(16, 3, 8, 8)
    qmodel = lowbit.quantize(model, x, weights_bits=8, activation_bits=8)
    called = {n.target for n in qmodel.graph.nodes if n.op == "call_module"}
    inner = [name for name, _ in quant_layers(qmodel) if name.startswith("block.")]
    assert "block" not in called and len(inner) >= 3 and set(inner) <= called
    assert all(qmodel.get_submodule(n).input_quant is None for n in inner)  # the graph quantizes their inputs
    with torch.no_grad():
        assert (qmodel(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


class SameConvNormAct(nn.Module):
    """timm's TensorFlow-padded convolution followed by its batch-norm-with-activation, as tf_ models build it."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import BatchNormAct2d, Conv2dSame

        self.conv, self.bn = Conv2dSame(3, 8, 3, stride=2, bias=False), BatchNormAct2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


def test_timm_batch_norm_with_activation_is_folded_into_a_same_padded_convolution():
    torch.manual_seed(0)
    model, x = randomize_bn(SameConvNormAct()).eval(), torch.rand(16, 3, 9, 9)
    qmodel = lowbit.quantize(model, x, weights_bits=8, activation_bits=8)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in qmodel.modules())
    assert not any("batch_norm" in str(n.target) for n in qmodel.graph.nodes)
    with torch.no_grad():
        assert (qmodel(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()
