"""Latency and throughput of one model in four forms: float PyTorch, lowbit's simulated model, onnxruntime on
the float graph and onnxruntime on the QDQ graph (integer kernels), on the CPU or, with onnxruntime's CUDA or
TensorRT provider, on the GPU (PyTorch then runs there too)."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lowbit.deploy.onnx_export import export, export_float
from lowbit.deploy.runtime import OnnxClassifier, check_provider
from lowbit.errors import LowbitError
from lowbit.graph import activation_quantizers

# Timed runs of one form in a row, and the least time its untimed runs take before them (see :func:`median_seconds`)
BLOCK, SETTLE_S = 5, 0.1
FORMS = ("float PyTorch", "lowbit simulated", "onnxruntime fp32", "onnxruntime int8")


@dataclass(frozen=True)
class Timing:
    """Median seconds per batch over ``repeats`` timed runs (after warm-up), and images per second."""

    form: str
    batch_size: int
    median_s: float
    images_per_s: float
    threads: int
    repeats: int
    provider: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


def median_seconds(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
                   block: int = BLOCK) -> dict[str, float]:
    """Median wall time of each ``fn()`` over ``repeats`` timed runs. The functions take turns in blocks of
    ``block`` timed runs, each block after untimed ones (at least ``warmup`` runs and :data:`SETTLE_S` seconds):
    turns spread a slow spell of the machine (another process, a clock change) over every function alike, and
    the untimed runs give the threads of the runtime timed before time to go idle (onnxruntime's and PyTorch's
    pools keep spinning for a while after a call). Turns of one run would time that contention in every run,
    which at batch 1 can double a latency."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    while any(len(t) < repeats for t in times.values()):
        for name, fn in fns.items():
            start, runs = time.perf_counter(), 0
            while runs < warmup or time.perf_counter() - start < SETTLE_S:
                fn()
                runs += 1
            for _ in range(min(block, repeats - len(times[name]))):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def float_view(qmodel: nn.Module) -> nn.Module:
    """The quantized model with every activation quantizer off: the float computation of the same graph, on the
    dequantized weights (what a float model of this architecture costs)."""
    model = copy.deepcopy(qmodel).cpu().eval()
    for _, q in activation_quantizers(model):
        q.set_state("off")
    return model


def pytorch_device(provider: str) -> torch.device:
    """Where the PyTorch forms run beside onnxruntime's ``provider``: the GPU for a GPU provider, so that every
    form is timed on the same hardware."""
    if provider == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LowbitError(f"--provider {provider} times PyTorch on the GPU as well, and this PyTorch sees no CUDA "
                          "device; install a CUDA build of torch, or use --provider cpu")
    return torch.device("cuda")


def timed_run(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """One run of ``model`` on ``x`` that returns when the result exists (CUDA kernels run asynchronously)."""
    if x.device.type != "cuda":
        return lambda: model(x)
    return lambda: (model(x), torch.cuda.synchronize(x.device))


def given_file(path: str | Path, input_shape: tuple[int, ...], threads: int, provider: str) -> OnnxClassifier:
    """The exported file to time, refused in one line unless it takes inputs of ``input_shape``."""
    runner = OnnxClassifier(path, threads, provider)
    taken = runner.input_shape[1:]
    if len(taken) != len(input_shape) or any(isinstance(t, int) and t != s for t, s in zip(taken, input_shape)):
        raise LowbitError(f"{path} takes inputs of shape {taken}, not the model's {list(input_shape)}; pass the "
                          "file `lowbit export` wrote for this model")
    return runner


def bench_model(qmodel: nn.Module, input_shape: tuple[int, ...], batch_sizes: list[int], threads: int,
                warmup: int = 3, repeats: int = 10, forms: tuple[str, ...] = FORMS,
                work_dir: str | Path | None = None, provider: str = "cpu",
                int8_file: str | Path | None = None) -> list[Timing]:
    """Time each of ``forms`` at each batch size on random inputs (timing does not depend on the values).

    PyTorch and onnxruntime both run with ``threads`` intra-op threads; onnxruntime with ``provider`` (a key of
    :data:`lowbit.deploy.providers.PROVIDERS`), PyTorch on the GPU when that provider is a GPU one. onnxruntime's
    times include copying each batch to the device and the outputs back, as a plain ``session.run`` does. The
    ONNX files are written to ``work_dir`` (a temporary folder by default); ``int8_file``, an exported file of
    the model (the one to be deployed, with the options it was written with), is timed instead of a new export.
    """
    check_provider(provider)
    device = pytorch_device(provider)
    torch.set_num_threads(threads)
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(work_dir or tmp)
        runners: dict[str, nn.Module] = {}
        if "onnxruntime int8" in forms and int8_file:  # checked before anything is exported
            runners["onnxruntime int8"] = given_file(int8_file, input_shape, threads, provider)
        if "float PyTorch" in forms or "onnxruntime fp32" in forms:
            runners["float PyTorch"] = float_view(qmodel)
        if "onnxruntime fp32" in forms:
            runners["onnxruntime fp32"] = OnnxClassifier(
                export_float(runners["float PyTorch"], folder / "float.onnx", example), threads, provider)
        if "onnxruntime int8" in forms and not int8_file:
            runners["onnxruntime int8"] = OnnxClassifier(export(qmodel, folder / "int8.onnx", example).path, threads,
                                                         provider)
        if "lowbit simulated" in forms:
            runners["lowbit simulated"] = qmodel.to(device).eval()
        if "float PyTorch" in runners:
            runners["float PyTorch"].to(device)
        timings = []
        for batch in batch_sizes:
            x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(batch))
            on_device = x.to(device)
            with torch.inference_mode():
                runs = {form: timed_run(runners[form], x if form.startswith("onnxruntime") else on_device)
                        for form in forms}
                seconds = median_seconds(runs, warmup, repeats)
            timings += [Timing(form, batch, seconds[form], batch / seconds[form], threads, repeats, provider)
                        for form in forms]
        return timings
