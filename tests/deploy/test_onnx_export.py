"""ONNX export: QDQ form with lowbit's own grids, integer kernels in onnxruntime, same outputs on both sides."""

import os
import tempfile
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import lowbit
from conftest import randomize_bn
from lowbit.deploy import export
from lowbit.deploy.runtime import INTEGER_OPS, optimized_op_counts, session_options
from lowbit.errors import LowbitError
from lowbit.graph import activation_quantizers, layer_input_quantizers
from lowbit.integer_bias import bias_codes, bias_grid
from lowbit.layers import QuantLayer, quant_layers


class WideNet(nn.Module):
    """Conv-BN-ReLU layers wide enough that weights, not per-channel scales, dominate the file."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                                  nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def run_onnx(path, x, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    session = ort.InferenceSession(str(path), session_options(1, level), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def initializers(path):
    return {i.name: i for i in onnx.load(str(path)).graph.initializer}


def constants(graph) -> dict[str, np.ndarray]:
    """Initializers by name, and the outputs of the Casts that read them (narrow types stored, wide ones read)."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Cast" and n.input[0] in values:
            to = onnx.helper.tensor_dtype_to_np_dtype(n.attribute[0].i)
            values[n.output[0]] = values[n.input[0]].astype(to)
    return values


def dequantized_weights(path):
    """codes name -> (codes, scale, zero point) of every DequantizeLinear reading constants (a zero point left
    out is zeros of the codes' type, as ONNX defines it)."""
    graph = onnx.load(str(path)).graph
    inits = constants(graph)
    out = {}
    for n in graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            codes, scale = inits[n.input[0]], inits[n.input[1]]
            given = len(n.input) > 2 and n.input[2]
            out[n.input[0]] = codes, scale, inits[n.input[2]] if given else np.zeros(scale.shape, codes.dtype)
    return out


def integer_biases(path) -> list[list[int]]:
    """The int32 biases of the integer convolutions and matmuls onnxruntime runs, in graph order (the file
    stores float biases, which its optimizer quantizes when the session starts)."""
    with tempfile.TemporaryDirectory() as d:
        options = session_options(1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        options.optimized_model_filepath = os.path.join(d, "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    bias_input = {"QLinearConv": 8, "QGemm": 6}
    return [inits[n.input[bias_input[n.op_type]]].tolist() for n in graph.node if n.op_type in bias_input]


def lowbit_bias_codes(qmodel) -> list[list[int]]:
    """lowbit's int32 bias codes of the layers that run on integer kernels, in module order."""
    modules, inputs = dict(qmodel.named_modules()), layer_input_quantizers(qmodel)
    return [bias_codes(layer.bias, bias_grid(layer, modules[inputs[name]])).tolist()
            for name, layer in quant_layers(qmodel)]


def repeated_defaults(graph) -> list[str]:
    """``op.attribute`` for every node attribute written with its operator's default value."""
    found = []
    for node in graph.node:
        schema = onnx.defs.get_schema(node.op_type, 21, node.domain)
        for attribute in node.attribute:
            default = schema.attributes[attribute.name].default_value
            if default.type and onnx.helper.get_attribute_value(default) == onnx.helper.get_attribute_value(attribute):
                found.append(f"{node.op_type}.{attribute.name}")
    return found


def test_w8a8_runs_integer_kernels_and_matches_lowbit(residual_net, images, tmp_path, device):
    qmodel = lowbit.quantize(residual_net.to(device), images.to(device), weights_bits=8, activation_bits=8)
    path = export(qmodel, tmp_path / "m.onnx", images[:2].to(device)).path
    qmodel.cpu()
    model = onnx.load(str(path))
    assert {n.domain for n in model.graph.node} <= {""}, "a plain onnxruntime must read the file"
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    counts = optimized_op_counts(path)
    convs = sum(isinstance(layer, nn.Conv2d) for _, layer in quant_layers(qmodel))
    assert counts["QLinearConv"] == convs and counts["Conv"] == 0, counts
    assert counts["QGemm"] == 1 and counts["Gemm"] == 0, counts  # the classifier head, on integers too
    assert integer_biases(path) == lowbit_bias_codes(qmodel)  # onnxruntime's int32 biases are lowbit's codes
    with torch.no_grad():
        ours = qmodel(images)
    theirs = run_onnx(path, images)
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() >= 0.95
    assert (ours - theirs).abs().max() < 0.05 * ours.abs().max()


def test_file_holds_lowbit_codes_and_grids(residual_net, images, tmp_path):
    qmodel = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=8)
    path = export(qmodel, tmp_path / "m.onnx", images[:2]).path
    inits, weights = initializers(path), dequantized_weights(path)
    for name, layer in quant_layers(qmodel):
        codes, scale, zero_point = weights[f"{name}.w.codes"]
        assert codes.dtype == np.int8
        channel = (-1, *[1] * (codes.ndim - 1))
        np.testing.assert_array_equal(codes.astype(np.int32) - zero_point.astype(np.int32).reshape(channel),
                                      layer.qweight.numpy() - layer.weight_quant.zero_point.numpy().reshape(channel))
        np.testing.assert_array_equal(scale, layer.weight_quant.scale.expand(codes.shape[0]).numpy())
    act_scales = {float(q.scale) for _, q in activation_quantizers(qmodel)}
    onnx_scales = {float(numpy_helper.to_array(i)) for n, i in inits.items() if n.endswith(".scale")
                   and numpy_helper.to_array(i).ndim == 0}
    assert act_scales <= onnx_scales


def test_weights_are_int8_by_default_and_uint8_on_request(residual_net, images, tmp_path):
    qmodel = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=8)
    signed = initializers(export(qmodel, tmp_path / "s.onnx", images[:2]).path)
    unsigned = initializers(export(qmodel, tmp_path / "u.onnx", images[:2], signed_weights=False).path)
    assert signed["stem.0.w.codes"].data_type == onnx.TensorProto.INT8
    assert unsigned["stem.0.w.codes"].data_type == onnx.TensorProto.UINT8
    shift = numpy_helper.to_array(unsigned["stem.0.w.codes"]).astype(np.int32) - numpy_helper.to_array(
        signed["stem.0.w.codes"]).astype(np.int32)
    assert (shift == 128).all()  # the same values, offset with their zero points


def test_w4_weights_are_stored_in_4_bit_types_and_still_run_on_integers(tmp_path):
    torch.manual_seed(0)
    net = randomize_bn(WideNet())
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    qmodel = lowbit.quantize(net, x, weights_bits=4, activation_bits=8)
    report = export(qmodel, tmp_path / "w4.onnx", x[:2])
    float_size = lowbit.deploy.export_float(net, tmp_path / "f.onnx", x[:2]).stat().st_size
    inits = initializers(report.path)
    assert inits["body.0.w.codes.int4"].data_type == onnx.TensorProto.INT4
    scales = [i for name, i in inits.items() if name.endswith(".w.scale.fp16")]  # float16 numbers since freezing
    assert len(scales) == 4 and all(i.data_type == onnx.TensorProto.FLOAT16 for i in scales)
    assert report.bytes <= 0.16 * float_size
    graph = onnx.load(str(report.path)).graph  # no debugging records: runtimes infer shapes themselves
    assert not any(node.name for node in graph.node)  # nor the exporter's names: values linking nodes get short ones
    assert max(len(name) for node in graph.node for name in node.output if name != "output") <= 2
    assert not graph.value_info and not any(node.metadata_props for node in graph.node)
    assert not any(p.key.startswith("pkg.torch.") for p in graph.metadata_props)
    assert not repeated_defaults(graph)  # nor copies of each operator's default attributes
    conv_biases = [inits[n.input[2]] for n in graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) > 2]
    assert len(conv_biases) == 4 and all(b.data_type == onnx.TensorProto.FLOAT for b in conv_biases)
    assert not any(name.endswith(".bias_q") for name in inits)  # no int32 copies: onnxruntime quantizes them
    counts = optimized_op_counts(report.path)
    assert counts["QLinearConv"] == 3 and counts["Conv"] == 0, counts
    with torch.no_grad():
        ours = qmodel(x)
    assert (ours - run_onnx(report.path, x)).abs().max() < 0.05 * ours.abs().max()


@pytest.mark.parametrize("activation_bits", [3, 4])
@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL])
def test_narrow_activations_keep_their_exact_range(residual_net, images, tmp_path, activation_bits, level):
    """Also through onnxruntime's optimizer, which would otherwise fuse 4-bit activations into kernels that
    take none and round float biases to the coarse input-times-weight grid of narrow inputs."""
    qmodel = lowbit.quantize(residual_net, images, weights_bits=4, activation_bits=activation_bits)
    report = export(qmodel, tmp_path / "a.onnx", images[:2])
    assert any(f"{activation_bits}-bit activations" in line for line in report.float_compute)
    with torch.no_grad():
        ours = qmodel(images)
    theirs = run_onnx(report.path, images, level)
    assert (ours - theirs).abs().max() < 1e-3 * ours.abs().max()


class SizeBranch(nn.Module):
    """Quantized by module swapping: its linear layer's output is not quantized."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 4:
            x = x * 2.0
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("activation_bits", [2, 3, 4])
def test_a_linear_layer_behind_a_narrow_grid_keeps_its_bias_in_onnxruntime(images, tmp_path, activation_bits):
    """onnxruntime fuses such a layer, with a float output, into its integer QGemm, which would read an int32
    bias as lying on the input-times-weight grid."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.fx could not trace")
        qmodel = lowbit.quantize(SizeBranch().eval(), images, weights_bits=4, activation_bits=activation_bits)
    report = export(qmodel, tmp_path / "s.onnx", images[:2])
    with torch.no_grad():
        ours = qmodel(images)
    assert (ours - run_onnx(report.path, images)).abs().max() < 1e-3 * ours.abs().max()


def test_4_bit_activations_after_relu6_load_and_match_in_onnxruntime(images, tmp_path):
    """onnxruntime folds a Clip (ReLU6) into the QuantizeLinear after it, and cannot when that writes 4-bit codes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 8, 3), nn.ReLU6(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    qmodel = lowbit.quantize(net, images, weights_bits=4, activation_bits=4)
    report = export(qmodel, tmp_path / "r6.onnx", images[:2])
    with torch.no_grad():
        ours = qmodel(images)
    assert (ours - run_onnx(report.path, images)).abs().max() < 1e-3 * ours.abs().max()


def test_narrow_inputs_feeding_8_bit_outputs_keep_their_biases(residual_net, images, tmp_path):
    """2-bit inputs and weights with the residual branches requantized at 8 bits: the layers that read 2-bit
    codes and write 8-bit ones keep lowbit's float bias in the optimized onnxruntime graph."""
    qmodel = lowbit.quantize(residual_net, images, weights_bits=2, activation_bits=2, residual_bits=8)
    report = export(qmodel, tmp_path / "r.onnx", images[:2])
    graph = onnx.load(str(report.path)).graph
    bias_reads = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith(".bias_q")]
    assert bias_reads and all(len(n.input) == 2 for n in bias_reads)  # int32 biases: zero points are ONNX's 0
    with torch.no_grad():
        ours = qmodel(images)
    assert (ours - run_onnx(report.path, images)).abs().max() < 1e-3 * ours.abs().max()


def test_dynamic_16_bit_activations(residual_net, images, tmp_path):
    qmodel = lowbit.quantize(residual_net, None, weights_bits=8, activation_bits=16, dynamic_activations=True)
    report = export(qmodel, tmp_path / "d.onnx", images[:2])
    assert any("16-bit dynamic" in line for line in report.float_compute)
    with torch.no_grad():
        ours = qmodel(images)
    assert (ours - run_onnx(report.path, images)).abs().max() < 1e-3 * ours.abs().max()


def test_dynamic_8_bit_activations_use_dynamic_integer_kernels(tiny_vit, tmp_path):
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    qmodel = lowbit.quantize(tiny_vit, None, weights_bits=8, activation_bits=8, dynamic_activations=True)
    path = export(qmodel, tmp_path / "d8.onnx", x[:2]).path
    assert "DynamicQuantizeLinear" in {n.op_type for n in onnx.load(str(path)).graph.node}
    assert set(optimized_op_counts(path)) & INTEGER_OPS
    with torch.no_grad():
        ours = qmodel(x)
    assert (ours - run_onnx(path, x)).abs().max() < 0.05 * ours.abs().max()


def test_fp16_weights_are_stored_as_float16(residual_net, images, tmp_path):
    qmodel = lowbit.quantize(residual_net, None, weights_bits="fp16", activation_bits="fp16")
    report = export(qmodel, tmp_path / "h.onnx", images[:2])
    path = report.path
    halves = [i for i in initializers(path).values() if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(halves) == report.narrowed_initializers == len(list(quant_layers(qmodel)))
    with torch.no_grad():
        ours = qmodel(images)
    assert (ours - run_onnx(path, images)).abs().max() < 2e-3 * ours.abs().max()  # half-precision steps


def test_transformer_exports_with_integer_matmuls(tiny_vit, tmp_path):
    x = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    qmodel = lowbit.quantize(tiny_vit, x, weights_bits=8, activation_bits=8)
    path = export(qmodel, tmp_path / "vit.onnx", x[:2]).path
    counts = optimized_op_counts(path)
    integer = sum(counts[op] for op in ("MatMulIntegerToFloat", "QLinearMatMul", "QGemm"))
    # per block 4 linear layers and 2 attention matmuls (queries, keys and values split out of one projection),
    # then the head
    assert integer == 2 * (4 + 2) + 1 and counts["MatMul"] + counts["FusedMatMul"] + counts["Gemm"] == 0, counts
    with torch.no_grad():
        ours = qmodel(x)
    theirs = run_onnx(path, x)
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() >= 0.9
    assert (ours - theirs).abs().max() < 0.05 * ours.abs().max()


class PooledTokens(nn.Module):
    """Patch tokens, a residual token mixer, and the mean over the quantized tokens before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mix, self.head = nn.Conv2d(1, 8, 4, stride=4), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = tokens + self.mix(tokens)
        return self.head(tokens.mean(1))


def test_the_file_holds_no_constant_that_no_node_reads(tmp_path):
    """The mean over quantized tokens is rewritten in 4-d form for OpenVINO; the constant axes of the mean it
    replaces leave the file with it (onnxruntime would warn about an unused initializer at every load)."""
    torch.manual_seed(0)
    x = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    qmodel = lowbit.quantize(PooledTokens().eval(), x, weights_bits=8, activation_bits=8)
    graph = onnx.load(str(export(qmodel, tmp_path / "pooled.onnx", x[:2]).path)).graph
    assert {"Unsqueeze", "ReduceMean"} <= {node.op_type for node in graph.node}  # the 4-d form was written
    read = {name for node in graph.node for name in node.input}
    assert [init.name for init in graph.initializer if init.name not in read] == []


class Scale(nn.Module):
    """A per-channel scale: a layer type lowbit can be taught to quantize but has no ONNX stand-in for."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, channels).reshape(channels, 1, 1))
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class QScale(QuantLayer, nn.Module):
    def __init__(self) -> None:
        nn.Module.__init__(self)

    @classmethod
    def from_float(cls, layer: Scale, weight_spec, input_spec=None, seed: int = 0) -> "QScale":
        return cls()._adopt(layer, weight_spec, input_spec, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize_input(x) * self.fake_quant_weight()


def test_a_quantized_layer_without_an_onnx_form_is_named(tmp_path):
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    conv = lowbit.quantize(nn.Sequential(nn.Conv2d(3, 4, 3)), x, weights_bits=8, activation_bits=8)
    spec = next(layer for _, layer in quant_layers(conv)).weight_quant.spec
    qmodel = nn.Sequential(conv, QScale.from_float(Scale(4), spec))  # as a module swap would place it
    with pytest.raises(LowbitError, match=r"layer 1 \(QScale\) has no ONNX export"):
        export(qmodel, tmp_path / "s.onnx", x[:2])
    assert not (tmp_path / "s.onnx").exists()


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_copying_padding_modes_export_to_integer_convolutions(mode, tmp_path):
    """Reflect, replicate and circular padding copy input values: padded before the input quantizer, the layer
    stays an integer convolution and computes lowbit's codes exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode=mode), nn.ReLU(),
                          nn.Conv2d(8, 4, 3, padding=(1, 2), padding_mode=mode), nn.Flatten(), nn.Linear(4 * 8 * 10, 5))
    x = torch.rand(32, 3, 8, 8)
    qmodel = lowbit.quantize(model.eval(), x, weights_bits=8, activation_bits=8)
    path = export(qmodel, tmp_path / "m.onnx", x[:2]).path
    counts = optimized_op_counts(path)
    assert counts["QLinearConv"] == 2 and counts["Conv"] == 0, counts
    with torch.no_grad():
        ours = qmodel(x)
    assert torch.equal(ours, run_onnx(path, x))


class QuietHead(nn.Module):
    """A head whose input grid has a tiny step (the layer before it is nearly silent), so its int32 bias grid,
    input step times weight step, lies below 1e-8."""

    def __init__(self, silence: float) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 5)
        with torch.no_grad():
            self.conv.weight.mul_(silence)
            self.conv.bias.zero_()
            self.fc.bias.copy_(torch.linspace(-0.5, 0.5, 5))

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("silence", [1e-3, 1e-5])
def test_biases_behind_tiny_input_steps_stay_exact(silence, tmp_path):
    """onnxruntime reads a layer's int32 bias as lying on input step times weight step: lowbit puts it on
    exactly that grid however small (1e-3), and adds it after the layer where int32 cannot hold it there (1e-5)."""
    torch.manual_seed(0)
    x = torch.rand(32, 3, 8, 8)
    qmodel = lowbit.quantize(QuietHead(silence).eval(), x, weights_bits=8, activation_bits=8)
    report = export(qmodel, tmp_path / "m.onnx", x[:2])
    with torch.no_grad():
        ours = qmodel(x)
    assert ours.abs().max() > 0.4  # the bias is the output
    torch.testing.assert_close(run_onnx(report.path, x), ours, rtol=0, atol=1e-6)
    added_after = any("does not fit int32" in line for line in report.float_compute)
    assert added_after == (silence < 1e-4), report.float_compute
    if not added_after:
        assert integer_biases(report.path) == lowbit_bias_codes(qmodel)


class ReadsWeight(nn.Module):
    """A forward that takes its input's dtype from a layer's weight, as timm's Fourier position encoding does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 5)

    def forward(self, x):
        y = self.conv(x.to(self.conv.weight.dtype))
        return self.fc(y.mean((2, 3)).to(self.fc.weight.device))


def test_layers_read_by_forward_keep_weight_attributes(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    qmodel = lowbit.quantize(ReadsWeight().eval(), x, weights_bits=8, activation_bits=8)
    path = export(qmodel, tmp_path / "m.onnx", x[:2]).path
    with torch.no_grad():
        ours = qmodel(x)
    assert (ours - run_onnx(path, x)).abs().max() < 0.05 * ours.abs().max()

