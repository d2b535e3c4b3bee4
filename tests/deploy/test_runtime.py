"""onnxruntime sessions: the execution provider asked for or one clear line, and what lowbit reads of the
machine before it advises on onnxruntime's int8 kernels."""

import pytest
import torch

import lowbit
import lowbit.deploy.bench as bench
import lowbit.deploy.runtime as runtime
from lowbit.deploy import export
from lowbit.deploy.providers import PROVIDERS
from lowbit.deploy.runtime import x86_without_vnni
from lowbit.errors import LowbitError


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse sse2 avx2 fma", True),  # x86 with AVX2 only: the uint8 x int8 kernel can saturate
    ("fpu sse2 avx2 avx512f avx512_vnni", False),
    ("fpu sse2 avx2 avx_vnni", False),
])
def test_x86_cpus_are_told_apart_by_vnni(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: some CPU\nflags\t\t: {flags}\n\n")
    assert x86_without_vnni(cpuinfo) is expected


def test_other_machines_get_no_advice(tmp_path):
    arm = tmp_path / "cpuinfo"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n")
    assert not x86_without_vnni(arm)
    assert not x86_without_vnni(tmp_path / "missing")


@pytest.fixture
def w8_file(residual_net, images, tmp_path):
    qmodel = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=8)
    return qmodel, export(qmodel, tmp_path / "m.onnx", images[:2]).path


@pytest.mark.parametrize("provider", runtime.present_providers())  # CUDA and TensorRT too with onnxruntime-gpu
def test_every_present_provider_runs_the_file_as_lowbit_does(w8_file, images, provider):
    qmodel, path = w8_file
    model = runtime.OnnxClassifier(path, provider=provider)
    assert model.session.get_providers()[0] == PROVIDERS[provider]
    with torch.no_grad():
        ours = qmodel(images)
    theirs = model(images)
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() >= 0.95
    assert (ours - theirs).abs().max() < 0.05 * ours.abs().max()


def test_a_provider_this_onnxruntime_lacks_is_one_line_naming_the_package(w8_file, monkeypatch):
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(LowbitError, match="install onnxruntime-gpu") as caught:
        runtime.OnnxClassifier(w8_file[1], provider="cuda")
    assert "\n" not in str(caught.value)
    with pytest.raises(LowbitError, match="unknown execution provider"):
        runtime.check_provider("rocm")


class CpuOnlySession:
    """What onnxruntime gives when a listed GPU provider fails to start: a session on the CPU, and a warning."""

    def __init__(self, path, options, providers):
        self.providers = providers

    def get_providers(self):
        return ["CPUExecutionProvider"]


def test_a_provider_that_falls_back_to_the_cpu_is_refused(w8_file, monkeypatch):
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: list(PROVIDERS.values()))
    monkeypatch.setattr(runtime.ort, "InferenceSession", CpuOnlySession)
    with pytest.raises(LowbitError, match="did not start"):
        runtime.open_session(w8_file[1], provider="cuda")


def test_gpu_timing_needs_pytorch_on_the_gpu_too(monkeypatch):
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.pytorch_device("cpu") == torch.device("cpu")
    with pytest.raises(LowbitError, match="sees no CUDA device"):
        bench.pytorch_device("cuda")
