"""Running exported files in onnxruntime: a session that behaves like a classifier module, and what
onnxruntime's optimizer turned the graph into (integer kernels or float ones)."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn

from lowbit.deploy.providers import PROVIDERS
from lowbit.errors import LowbitError, first_line

# Kernels that compute on integers (onnxruntime's fused forms of QDQ groups, and ONNX's own integer ops)
INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm",
                         "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul",
                         "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid",
                         "QLinearLeakyRelu", "QLinearSoftmax", "NhwcQLinearConv"})
FLOAT_COMPUTE_OPS = frozenset({"Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm"})


ALL_OPTIMIZATIONS = ort.GraphOptimizationLevel.ORT_ENABLE_ALL


VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The instruction-set flags of the first CPU listed in ``cpuinfo``; None where it cannot tell (not Linux,
    not x86)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    return next((frozenset(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")),
                None)


def x86_without_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this is an x86 CPU without VNNI, where onnxruntime's uint8 x int8 kernel can saturate on
    8-bit weights in sessions that do not set :data:`EXACT_INTEGER_PRODUCTS`. False where it cannot tell (not
    Linux, not x86)."""
    flags = cpu_flags(cpuinfo)
    return flags is not None and "sse2" in flags and not VNNI_FLAGS & flags


# On x86 CPUs without VNNI, onnxruntime's integer kernels multiply uint8 activations by int8 weights with an
# instruction that adds pairs of products in saturating 16-bit sums, which 8-bit weight codes can exceed; this
# session option makes it convert such weights to uint8 when the session starts (exact uint8 x uint8 kernels,
# slower). It changes nothing on other CPUs. Every session lowbit opens sets it, so that what lowbit reports for
# a file is what lowbit's own model computes.
EXACT_INTEGER_PRODUCTS = ("session.x64quantprecision", "1")


def session_options(threads: int | None = None, level: ort.GraphOptimizationLevel = ALL_OPTIMIZATIONS,
                    exact_products: bool = True) -> ort.SessionOptions:
    """lowbit's onnxruntime session settings: ``level`` of graph optimization, quiet logs, exact integer
    products on every CPU (see :data:`EXACT_INTEGER_PRODUCTS`; ``exact_products=False`` leaves onnxruntime's
    default, which benchmarks compare), and ``threads`` intra-op threads if given."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3  # errors only: the optimizer's notes are not the user's concern
    if exact_products:
        options.add_session_config_entry(*EXACT_INTEGER_PRODUCTS)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def present_providers() -> list[str]:
    """The keys of :data:`PROVIDERS` this onnxruntime has (the CPU's always; CUDA and TensorRT with
    onnxruntime-gpu)."""
    available = ort.get_available_providers()
    return [key for key, name in PROVIDERS.items() if name in available]


def check_provider(provider: str) -> str:
    """onnxruntime's name for ``provider`` (a key of :data:`PROVIDERS`), or one line saying how to get it."""
    if provider not in PROVIDERS:
        raise LowbitError(f"unknown execution provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    name, present = PROVIDERS[provider], present_providers()
    if provider not in present:
        have = ", ".join(present) or "none of lowbit's"
        raise LowbitError(f"this onnxruntime {ort.__version__} has no {provider} execution provider (it has {have}); "
                          "install onnxruntime-gpu in its place for cuda and tensorrt, or use --provider cpu")
    return name


def open_session(path: str | os.PathLike, threads: int | None = None, provider: str = "cpu",
                 exact_products: bool = True) -> ort.InferenceSession:
    """An onnxruntime session on ``path`` with ``provider`` (nodes it cannot run fall back to the CPU), with one
    clear error for a file that is not a usable model or a provider that does not start: onnxruntime itself
    would quietly run everything on the CPU instead."""
    name = check_provider(provider)
    path = Path(path)
    if not path.is_file():
        raise LowbitError(f"file not found: {path}; check the path")
    providers = [name] if name == PROVIDERS["cpu"] else [name, PROVIDERS["cpu"]]
    try:
        session = ort.InferenceSession(str(path), session_options(threads, exact_products=exact_products),
                                       providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types for bad files
        raise LowbitError(f"{path} is not an ONNX model onnxruntime can run ({first_line(exc)[:200]}); "
                          "pass a file written by `lowbit export`") from None
    if name not in session.get_providers():
        raise LowbitError(f"onnxruntime's {provider} execution provider did not start on this machine (the session "
                          "fell back to the CPU); check the GPU driver and the CUDA and cuDNN libraries "
                          "onnxruntime-gpu needs, or use --provider cpu")
    return session


class OnnxClassifier(nn.Module):
    """An onnxruntime session behind ``nn.Module``'s call, so lowbit's evaluation runs it unchanged."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, provider: str = "cpu",
                 exact_products: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = open_session(path, threads, provider, exact_products)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) not in (2, 4):
            raise LowbitError(f"{path} is not an image classifier (it takes {len(inputs)} inputs and gives "
                              f"{len(outputs)} outputs); pass a file written by `lowbit export`")
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape

    def check_input(self, shape: tuple[int, ...], num_classes: int) -> None:
        """One line if the dataset's images or classes do not fit this model."""
        expected = [d if isinstance(d, int) else None for d in self.input_shape[1:]]
        if len(expected) != len(shape) or any(e is not None and e != s for e, s in zip(expected, shape)):
            raise LowbitError(f"{self.path} takes inputs of shape {self.input_shape[1:]} but the dataset's images are "
                              f"{list(shape)}; evaluate it on the dataset it was exported for")
        out = self.session.get_outputs()[0].shape
        if len(out) != 2 or (isinstance(out[1], int) and out[1] != num_classes):
            raise LowbitError(f"{self.path} gives outputs of shape {out}, not scores for {num_classes} classes; "
                              "evaluate it on the dataset it was exported for")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(None, {self.input_name: x.detach().float().cpu().contiguous().numpy()})
        return torch.from_numpy(out)


def optimized_op_counts(path: str | os.PathLike) -> Counter[str]:
    """The operators of the graph onnxruntime actually runs on this CPU (after its QDQ fusions)."""
    with tempfile.TemporaryDirectory() as d:
        options = session_options(1, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        options.optimized_model_filepath = os.path.join(d, "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
        return Counter(node.op_type for node in graph.node)


def kernel_summary(counts: Counter[str]) -> tuple[int, int]:
    """(integer compute kernels, float convolutions/matmuls) in an optimized graph."""
    return (sum(n for op, n in counts.items() if op in INTEGER_OPS),
            sum(n for op, n in counts.items() if op in FLOAT_COMPUTE_OPS))
