"""Deployment: lowbit's ONNX files in onnxruntime against onnxruntime's own static quantization.

Accuracy (full Fashion-MNIST test split) of the bundled models: lowbit's PyTorch model and its ONNX export run by
onnxruntime (top-1, per-image top-1 agreement, largest output difference, file size against the float ONNX file),
beside ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel, MinMax and Percentile calibrators) on the
float ONNX export of the same model, after onnxruntime's pre-processing, with the same 1024 calibration images
from the training split. Then speed on torchvision ResNet-18 at 224x224 (random weights and images: only time
is measured): float PyTorch, lowbit's simulated model, onnxruntime fp32, lowbit's int8 ONNX and onnxruntime's
own int8 model, at batch 1 and 8 with a fixed thread count, and the file sizes at W8A8 and W4A8. When OpenVINO is
installed (``pip install openvino``), the same lowbit files also run in OpenVINO's CPU plugin (float parts in f32):
top-1, agreement with lowbit's PyTorch model, and how many convolutions and matmuls it runs on integers.
``--provider cuda`` (or ``tensorrt``; both need onnxruntime-gpu and a CUDA build of torch) runs every onnxruntime
row with that execution provider and the PyTorch forms of the speed table on the GPU, into sections of their own.
Run: python3 benchmarks/deploy.py [--provider cpu|cuda|tensorrt]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

import lowbit
from lowbit.data import calibration_batches, load_dataset
from lowbit.deploy import export, export_float
from lowbit.deploy.bench import BLOCK, SETTLE_S, median_seconds, pytorch_device, timed_run
from lowbit.deploy.openvino_check import INTEGER_PRECISIONS, compile_openvino, openvino_version
from lowbit.deploy.providers import PROVIDERS
from lowbit.deploy.runtime import VNNI_FLAGS, OnnxClassifier, check_provider, cpu_flags
from report import bundled_model, md_table, publish, topic_page

PAGE = topic_page("deploy")
SETTINGS = {
    "W8A8": dict(weights_bits=8, activation_bits=8),
    "W8A8 --unsigned-weights": dict(weights_bits=8, activation_bits=8),
    "W4A8": dict(weights_bits=4, activation_bits=8),
    "mixed CR8 (2/4/8) A8": dict(weights_bits=8, activation_bits=8, mixed=lowbit.Budget(weights_cr=8)),
    "W4A8 brecq": dict(weights_bits=4, activation_bits=8, method="brecq"),
}


class Batches(CalibrationDataReader):
    """onnxruntime's calibration reader over lowbit's calibration batches."""

    def __init__(self, batches: list[torch.Tensor], input_name: str) -> None:
        self.items = iter([{input_name: b.numpy()} for b in batches])

    def get_next(self):
        return next(self.items, None)


def ort_static(float_path: Path, out: Path, batches: list[torch.Tensor], method: CalibrationMethod) -> Path:
    """onnxruntime's recommended flow: pre-process (shape inference, graph optimization), then quantize_static."""
    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(float_path), str(pre))
    quantize_static(str(pre), str(out), Batches(batches, "input"), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method)
    return out


def openvino_outputs(path: Path, test, threads: int) -> tuple[torch.Tensor, str] | None:
    """OpenVINO's outputs on the test split and its integer/total count of convolutions and matmuls, or None
    where OpenVINO is not installed."""
    if importlib.util.find_spec("openvino") is None:
        return None
    compiled, precisions = compile_openvino(path, threads)
    integer = sum(p in INTEGER_PRECISIONS for p in precisions)
    out = [torch.from_numpy(compiled(x.numpy())[0]) for x, _ in torch.utils.data.DataLoader(test, batch_size=500)]
    return torch.cat(out), f"{integer}/{len(precisions)}"


def agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    return 100 * float((a.argmax(1) == b.argmax(1)).float().mean()), float((a - b).abs().max())


def outputs(model, test) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x) for x, _ in torch.utils.data.DataLoader(test, batch_size=500)])


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100 * float((logits.argmax(1) == labels).float().mean())


def accuracy_table(name: str, calib_images: int, iters: int, tmp: Path, provider: str) -> str:
    train, _ = load_dataset("fashion-mnist", "train")
    test, _ = load_dataset("fashion-mnist", "test")
    labels = torch.tensor([int(y) for _, y in test])
    batches = calibration_batches(train, calib_images, 64, seed=0)
    model = bundled_model(name)
    example = batches[0][:2]
    float_onnx = export_float(model, tmp / f"{name}_float.onnx", example)
    float_size = float_onnx.stat().st_size
    rows = [["float32 PyTorch", top1(outputs(model, test), labels), "-", "-", "-", f"{float_size / 1024:.0f} KB"]]
    openvino_rows: list[list] = []
    for label, kw in SETTINGS.items():
        kw = {**kw, "iters": iters} if kw.get("method") == "brecq" else kw
        start = time.perf_counter()
        qmodel = lowbit.quantize(model, batches, **kw)
        seconds = time.perf_counter() - start
        report = export(qmodel, tmp / f"{name}_{label.replace(' ', '_')}.onnx", example,
                        signed_weights="unsigned" not in label)
        ours, theirs = outputs(qmodel, test), outputs(OnnxClassifier(report.path, provider=provider), test)
        agree, diff = agreement(ours, theirs)
        both = f"{top1(ours, labels):.2f} / {top1(theirs, labels):.2f}"
        size = f"{report.bytes / 1024:.0f} KB ({report.bytes / float_size:.3f}x)"
        rows.append([f"lowbit {label} (PyTorch / onnxruntime)", both, agree, diff, seconds, size])
        in_openvino = openvino_outputs(report.path, test, torch.get_num_threads()) if provider == "cpu" else None
        if in_openvino is not None:
            theirs, integer = in_openvino
            openvino_rows.append([f"lowbit {label}", top1(theirs, labels), *agreement(ours, theirs), integer])
    for method in (CalibrationMethod.MinMax, CalibrationMethod.Percentile):
        start = time.perf_counter()
        path = ort_static(float_onnx, tmp / f"{name}_ort_{method.name}.onnx", batches, method)
        seconds = time.perf_counter() - start
        theirs = outputs(OnnxClassifier(path, provider=provider), test)
        size = path.stat().st_size
        rows.append([f"onnxruntime quantize_static W8A8 {method.name}", top1(theirs, labels), "-", "-", seconds,
                     f"{size / 1024:.0f} KB ({size / float_size:.3f}x)"])
    table = md_table(["model", "top-1 %", "same top-1 as PyTorch %", "max output diff", "quantize s",
                      "ONNX file (x float ONNX)"], rows)
    if openvino_rows:
        table += (f"\n\nThe same lowbit files in OpenVINO {openvino_version()} (CPU plugin, float "
                  "parts in f32):\n\n" + md_table(["file", "OpenVINO top-1 %", "same top-1 as PyTorch %",
                                                   "max output diff", "integer convs/matmuls"], openvino_rows))
    return table


def timing_resnet18() -> tuple[torch.nn.Module, list[torch.Tensor], torch.Generator]:
    """torchvision's ResNet-18 with seeded random weights, four batches of 8 random 224x224 images to calibrate
    on, and the generator that made them (for the timing inputs): only time is measured on it."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    gen = torch.Generator().manual_seed(0)
    return model, [torch.randn(8, 3, 224, 224, generator=gen) for _ in range(4)], gen


def speed_table(threads: int, batch_sizes: list[int], repeats: int, tmp: Path, provider: str) -> str:
    model, batches, gen = timing_resnet18()
    example = batches[0][:2]
    qmodel = lowbit.quantize(model, batches, weights_bits=8, activation_bits=8)
    w4 = export(lowbit.quantize(model, batches, weights_bits=4, activation_bits=8), tmp / "r18_w4a8.onnx", example)
    float_onnx = export_float(model, tmp / "r18_float.onnx", example)
    w8 = export(qmodel, tmp / "r18_w8a8.onnx", example)
    def ort(path: Path) -> OnnxClassifier:
        return OnnxClassifier(path, threads, provider)

    device = pytorch_device(provider)
    runners = {"float PyTorch": model.to(device), "lowbit simulated (PyTorch)": qmodel.to(device),
               "onnxruntime fp32": ort(float_onnx),
               "lowbit W8A8 ONNX (onnxruntime)": ort(w8.path),
               "lowbit W8A8 ONNX --unsigned-weights (onnxruntime)": ort(
                   export(qmodel, tmp / "r18_w8a8_u8.onnx", example, signed_weights=False).path),
               "lowbit W4A8 ONNX (onnxruntime)": ort(w4.path),
               "onnxruntime quantize_static W8A8": ort(
                   ort_static(float_onnx, tmp / "r18_ort.onnx", batches, CalibrationMethod.MinMax))}
    torch.set_num_threads(threads)
    rows, times = [], {}
    for batch in batch_sizes:
        x = torch.randn(batch, 3, 224, 224, generator=gen)
        on_device = x.to(device)
        with torch.inference_mode():
            runs = {form: timed_run(runner, x if isinstance(runner, OnnxClassifier) else on_device)
                    for form, runner in runners.items()}
            medians = median_seconds(runs, 2, repeats)
        times.update({(form, batch): t for form, t in medians.items()})
        for form in runners:
            t = times[form, batch]
            rows.append([form, batch, 1000 * t, batch / t, f"{times['onnxruntime fp32', batch] / t:.2f}x",
                         f"{times['onnxruntime quantize_static W8A8', batch] / t:.2f}x"])
    float_bytes = float_onnx.stat().st_size
    sizes = [[label, f"{size / 2**20:.2f} MiB", f"{size / float_bytes:.3f}x"]
             for label, size in (("float32", float_bytes), ("lowbit W8A8", w8.bytes), ("lowbit W4A8", w4.bytes))]
    return (md_table(["form", "batch", "median ms", "images/s", "speed vs onnxruntime fp32",
                      "speed vs onnxruntime int8"], rows)
            + f"\n\nMedians of {repeats} timed runs per form and batch size, taken in turns of {BLOCK} runs; each turn "
            f"starts with untimed runs (at least {SETTLE_S} s) so that the threads of the runtime timed before it are "
            f"idle. {vnni_note() if provider == 'cpu' else gpu_note(provider)}"
            + "\n\nONNX files of this ResNet-18:\n\n" + md_table(["file", "size", "x float32 ONNX"], sizes))


def gpu_note(provider: str) -> str:
    return (f"onnxruntime ran with its {provider} execution provider (its times include copying each batch to the "
            f"GPU and the outputs back), PyTorch on {torch.cuda.get_device_name()}.")


def vnni_note() -> str:
    """Whether onnxruntime's int8 kernels had VNNI instructions here (without them its int8 speed-up is smaller)."""
    flags = cpu_flags()
    if flags is None or "sse2" not in flags:
        return ""
    if VNNI_FLAGS & flags:
        return "This CPU has VNNI instructions, which onnxruntime's int8 kernels use."
    return "This CPU has no VNNI instructions, which onnxruntime's int8 kernels use where present."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=["resnet20", "mobilenet_v2_small", "vit_small"],
                        help="bundled models for the accuracy tables (none: speed only)")
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=300, help="brecq steps per block")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=50, help=f"timed runs per form and batch size, in turns of {BLOCK}")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    parser.add_argument("--no-speed", action="store_true", help="accuracy tables only")
    parser.add_argument("--provider", default="cpu", choices=list(PROVIDERS),
                        help="onnxruntime's execution provider (sections of its own for cuda and tensorrt)")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(args.threads)
    check_provider(args.provider)
    pytorch_device(args.provider)
    gpu = args.provider != "cpu"
    key, where = (f"-{args.provider}", f", onnxruntime's {args.provider} provider") if gpu else ("", "")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in args.models:
            body = accuracy_table(name, args.calib_images, args.iters, tmp, args.provider)
            publish(f"deploy-{name}{key}", f"ONNX export: {name} on Fashion-MNIST, onnxruntime vs lowbit{where}",
                    body, PAGE, not args.no_write)
        if args.no_speed:
            return
        body = speed_table(args.threads, args.batch_sizes, args.repeats, tmp, args.provider)
        publish(f"deploy-speed{key}", f"Speed: torchvision ResNet-18 at 224x224{where}", body, PAGE, not args.no_write)


if __name__ == "__main__":
    np.random.seed(0)
    main()
