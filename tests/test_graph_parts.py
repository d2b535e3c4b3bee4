"""Models torch.fx cannot trace as a whole: their traceable submodules are quantized as graphs (batch-norm
folded, residual sums quantized), so that onnxruntime runs their convolutions on integers."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import lowbit
from conftest import ResidualBlock, onnx_difference, randomize_bn
from lowbit.config import Override, QuantConfig
from lowbit.deploy import export
from lowbit.deploy.runtime import optimized_op_counts
from lowbit.graph import layer_input_quantizers, prepare
from lowbit.graph_parts import layer_order, traceable_parts
from lowbit.layers import QuantLayer, quant_layers
from lowbit.quantizer import Quantizer
from lowbit.spec import activation_spec


class ShapeBranch(nn.Module):
    """A stem and a head around traceable residual blocks, behind a branch on the input's size."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.blocks = nn.Sequential(ResidualBlock(channels), ResidualBlock(channels))
        self.head = nn.Linear(channels, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 16:  # upsample small inputs: a branch torch.fx cannot trace
            x = F.interpolate(x, scale_factor=2)
        x = self.blocks(torch.relu(self.bn(self.conv(x))))
        return self.head(x.mean(dim=(2, 3)))


def model() -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(ShapeBranch())


def prepared(config: QuantConfig) -> nn.Module:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.fx could not trace")
        return prepare(model(), config)


def quantized(images: torch.Tensor, **options) -> nn.Module:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.fx could not trace")
        return lowbit.quantize(model(), images, weights_bits=8, activation_bits=8, **options)


def test_the_traceable_blocks_become_graphs_and_the_rest_is_swapped():
    with pytest.warns(UserWarning, match=r"could not trace ShapeBranch .* 4 of its 6 quantizable layers, in 1 "):
        q = prepare(model(), QuantConfig.from_bits(8, 8))
    assert q.lowbit_info.mode == "parts" and type(q) is ShapeBranch
    assert isinstance(q.blocks, fx.GraphModule)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())  # folded: the blocks' by their graph,
    assert isinstance(q.bn, nn.Identity)  # the stem's as forward's code chains it (chained_batchnorm.py)
    adds = [n for n in q.blocks.graph.nodes if n.op == "call_function" and n.target is operator_add()]
    assert adds and all(isinstance(q.blocks.get_submodule(next(iter(a.users)).target), Quantizer)
                        for a in [next(iter(n.users)) for n in adds])  # the sum, after its ReLU, is requantized
    assert q.conv.input_quant is not None and q.head.input_quant is not None
    assert q.blocks.get_submodule("0.conv1").input_quant is None  # its input grid is the graph's


def operator_add():
    import operator
    return operator.add


def test_names_carry_the_parts_path_for_first_last_and_overrides():
    q = prepared(QuantConfig.from_bits(4, 8, first_last_bits=8, overrides=(
        Override("blocks.1.conv2", keep_float=True), Override("blocks.relu_1", activations=activation_spec(6)))))
    layers = dict(quant_layers(q))
    assert layers["conv"].weight_quant.spec.bits == 8 and layers["head"].weight_quant.spec.bits == 8
    assert layers["blocks.0.conv1"].weight_quant.spec.bits == 4
    assert "blocks.1.conv2" not in layers and isinstance(q.blocks.get_submodule("1.conv2"), nn.Conv2d)
    bits = {n: m.spec.bits for n, m in q.named_modules() if isinstance(m, Quantizer) and "act_quant" in n}
    assert [b for n, b in bits.items() if n.endswith(".relu_1")] == [6]
    with pytest.raises(lowbit.LowbitError, match="matches no layer"):
        prepared(QuantConfig.from_bits(8, 8, overrides=(Override("relu_1", keep_float=True),)))


def test_every_layer_knows_its_input_quantizer():
    q = prepared(QuantConfig.from_bits(8, 8))
    inputs = layer_input_quantizers(q)
    assert set(inputs) == {n for n, m in q.named_modules() if isinstance(m, QuantLayer)}
    assert inputs["conv"] == "conv.input_quant" and inputs["blocks.0.conv1"].startswith("blocks.act_quant.")


def test_8bit_model_stays_close_to_float_and_reloads_exactly(images, tmp_path):
    q = quantized(images[:32])
    test = images[32:]
    with torch.no_grad():
        ref, out = model()(test), q(test)
    assert (out - ref).norm() / ref.norm() < 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reloading prepares in parts directly, without a second warning
        loaded = lowbit.load(lowbit.save(q, tmp_path / "p.lowbit"), model=ShapeBranch())
    assert loaded.lowbit_info.mode == "parts"
    with torch.no_grad():
        assert torch.equal(loaded(test), q(test))


def test_the_blocks_run_on_integer_kernels_in_onnxruntime(images, tmp_path):
    """The blocks, the stem (its batch-norm folded) and the swapped head, whose output no grid follows."""
    q = quantized(images[:32])
    report = export(q, tmp_path / "p.onnx", images[:2])
    counts = optimized_op_counts(report.path)
    assert counts["QLinearConv"] == 5 and counts["Conv"] + counts["FusedConv"] == 0, counts
    assert counts["QGemm"] == 1 and counts["Gemm"] == 0, counts
    assert onnx_difference(q, report.path, images[32:]) < 2e-2


class TwoArguments(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.conv(x) * scale


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()), TwoArguments()])
        self.shared = nn.Sequential(nn.Conv2d(4, 4, 1))
        self.again = self.shared
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x) if x.sum() > 0 else x
        return self.again(self.shared(self.act(x)))


def test_parts_take_one_argument_and_are_traced_once():
    model = Outer()
    parts = traceable_parts(model)
    # a list is split into its items; a forward with a second argument is split into its layers, since tracing
    # would fix the argument; a module registered twice is one part
    assert list(parts) == ["stages.0", "shared"]
    assert layer_order(model, parts) == ["stages.0.0", "stages.1.conv", "shared.0"]


def test_a_module_registered_twice_is_replaced_under_both_names(images):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.fx could not trace")
        q = prepare(Outer(), QuantConfig.from_bits(8, 8))
    assert isinstance(q.shared, fx.GraphModule) and q.again is q.shared
    assert isinstance(q.stages[1].conv, QuantLayer)


def test_mixed_precision_and_fine_tuning_work_on_a_model_in_parts(images):
    labels = torch.randint(0, 5, (32,), generator=torch.Generator().manual_seed(0))
    q = quantized(images[:32], mixed=lowbit.Budget(weights_cr=6), sensitivity_images=32)
    bits = {n: layer.weight_quant.spec.bits for n, layer in quant_layers(q)}
    assert set(bits) == {"conv", "blocks.0.conv1", "blocks.0.conv2", "blocks.1.conv1", "blocks.1.conv2", "head"}
    assert len(set(bits.values())) > 1 and q.lowbit_info.mode == "parts"
    tuned = lowbit.finetune(q, (images[:32], labels), epochs=1, batch_size=16)
    assert tuned.lowbit_info.mode == "parts" and isinstance(tuned.blocks, fx.GraphModule)
    with torch.no_grad():
        assert torch.isfinite(tuned(images[32:])).all()


class Gained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gain = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.gain


class SetsAnAttribute(nn.Module):
    """Its forward changes a value its traceable block reads: a traced copy of the block keeps the old one."""

    def __init__(self) -> None:
        super().__init__()
        self.block = Gained()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.block.gain = 2.0 if x.sum() > 0 else 0.5
        return self.head(torch.relu(self.block(x)).mean((2, 3)))


class IndexesABlock(SetsAnAttribute):
    """Its forward indexes its traceable block, which a traced copy cannot be."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(Gained(), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.block[0].gain = 2.0 if x.sum() > 0 else 0.5
        return self.head(self.block(x).mean((2, 3)))


@pytest.mark.parametrize("make", [SetsAnAttribute, IndexesABlock])
def test_parts_that_compute_something_else_fall_back_to_module_swapping(make, images):
    model = make().eval()
    with pytest.warns(UserWarning, match="do not compute what its forward computes"):
        q = lowbit.quantize(model, images.abs(), weights_bits=8, activation_bits=8)
    assert q.lowbit_info.mode == "swap"
    with torch.no_grad():
        ref = model(images.abs())
        assert (q(images.abs()) - ref).abs().max() < 0.05 * ref.abs().max()
