"""onnxruntime on an x86 CPU without VNNI: 8-bit weights with and without onnxruntime's exact-product option.

On such CPUs onnxruntime multiplies uint8 activations by int8 weights with an instruction that adds pairs of
products in saturating 16-bit sums. The session option ``session.x64quantprecision=1`` (set by every session
lowbit opens) converts such weights to uint8 when the session starts. For each bundled model (full Fashion-MNIST
test split, 1024 calibration images): lowbit's W8A8 file with and without the option, its ``--unsigned-weights``
form without it, and onnxruntime's own ``quantize_static`` W8A8 file (QDQ, per-channel, MinMax) with and without
it, each compared with what the file means (lowbit's PyTorch model; for onnxruntime's file, the same file run
without graph optimizations, which dequantizes and computes in float); lowbit's W7A8 file (7-bit weights cannot
saturate, and onnxruntime converts no weight inside [-64, 63]); and both lowbit files in OpenVINO, whose int8
kernels saturate on such CPUs too, where it is installed. Then the time of each on torchvision's
ResNet-18 at 224x224 (random weights and images) at batch 1 and 8. Refuses to run on a CPU with VNNI, where
the option changes nothing.
Run: python3 benchmarks/no_vnni.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationMethod

import lowbit
from lowbit.data import calibration_batches, load_dataset
from lowbit.deploy import export, export_float
from lowbit.deploy.bench import BLOCK, median_seconds, timed_run
from lowbit.deploy.runtime import OnnxClassifier, session_options, x86_without_vnni
from deploy import agreement, openvino_outputs, ort_static, outputs, timing_resnet18, top1
from lowbit.deploy.openvino_check import openvino_version
from report import bundled_model, md_table, publish, topic_page

PAGE = topic_page("deploy")
OPTION = "session.x64quantprecision"


class Unoptimized(torch.nn.Module):
    """An ONNX file run with no graph optimization: every DequantizeLinear computed, then float kernels (what
    the file means, with no integer kernel's arithmetic)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        options = session_options(level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input": x.numpy()})[0])


def accuracy_rows(name: str, tmp: Path) -> list[list]:
    train, _ = load_dataset("fashion-mnist", "train")
    test, _ = load_dataset("fashion-mnist", "test")
    labels = torch.tensor([int(y) for _, y in test])
    batches = calibration_batches(train, 1024, 64, seed=0)
    model, example = bundled_model(name), batches[0][:2]
    qmodel = lowbit.quantize(model, batches, weights_bits=8, activation_bits=8)
    w7 = lowbit.quantize(model, batches, weights_bits=7, activation_bits=8)
    signed = export(qmodel, tmp / f"{name}_s8.onnx", example).path
    unsigned = export(qmodel, tmp / f"{name}_u8.onnx", example, signed_weights=False).path
    seven = export(w7, tmp / f"{name}_w7.onnx", example).path
    theirs = ort_static(export_float(model, tmp / f"{name}_float.onnx", example), tmp / f"{name}_ort.onnx",
                        batches, CalibrationMethod.MinMax)
    ours, ours_w7, their_meaning = outputs(qmodel, test), outputs(w7, test), outputs(Unoptimized(theirs), test)
    rows = []
    for label, path, exact, reference in (
            (f"lowbit W8A8, {OPTION}=1 (lowbit's sessions)", signed, True, ours),
            ("lowbit W8A8, onnxruntime's default (option off)", signed, False, ours),
            ("lowbit W8A8 --unsigned-weights, option off", unsigned, False, ours),
            ("lowbit W7A8, option off", seven, False, ours_w7),
            (f"onnxruntime quantize_static W8A8, {OPTION}=1", theirs, True, their_meaning),
            ("onnxruntime quantize_static W8A8, option off", theirs, False, their_meaning)):
        got = outputs(OnnxClassifier(path, exact_products=exact), test)
        rows.append([name, label, top1(got, labels), *agreement(reference, got)])
    for label, path, reference in (("lowbit W8A8 in OpenVINO", signed, ours),
                                   ("lowbit W7A8 in OpenVINO", seven, ours_w7)):
        in_openvino = openvino_outputs(path, test, torch.get_num_threads())
        if in_openvino is not None:
            rows.append([name, f"{label} {openvino_version()} ({in_openvino[1]} integer convs/matmuls)",
                         top1(in_openvino[0], labels), *agreement(reference, in_openvino[0])])
    return rows


def speed_rows(threads: int, repeats: int, tmp: Path) -> list[list]:
    model, batches, gen = timing_resnet18()
    example = batches[0][:2]
    qmodel = lowbit.quantize(model, batches, weights_bits=8, activation_bits=8)
    float_onnx = export_float(model, tmp / "r18_float.onnx", example)
    signed = export(qmodel, tmp / "r18_s8.onnx", example).path
    unsigned = export(qmodel, tmp / "r18_u8.onnx", example, signed_weights=False).path
    w7 = lowbit.quantize(model, batches, weights_bits=7, activation_bits=8)
    seven = export(w7, tmp / "r18_w7.onnx", example).path
    theirs = ort_static(float_onnx, tmp / "r18_ort.onnx", batches, CalibrationMethod.MinMax)
    runners = {"onnxruntime fp32": OnnxClassifier(float_onnx, threads),
               f"lowbit W8A8, {OPTION}=1": OnnxClassifier(signed, threads),
               "lowbit W8A8, option off": OnnxClassifier(signed, threads, exact_products=False),
               "lowbit W8A8 --unsigned-weights, option off": OnnxClassifier(unsigned, threads, exact_products=False),
               f"lowbit W7A8, {OPTION}=1": OnnxClassifier(seven, threads),
               f"onnxruntime quantize_static W8A8, {OPTION}=1": OnnxClassifier(theirs, threads),
               "onnxruntime quantize_static W8A8, option off": OnnxClassifier(theirs, threads, exact_products=False)}
    rows = []
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224, generator=gen)
        with torch.inference_mode():
            medians = median_seconds({form: timed_run(r, x) for form, r in runners.items()}, 2, repeats)
        rows += [[form, batch, 1000 * t, f"{medians['onnxruntime fp32'] / t:.2f}x"] for form, t in medians.items()]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=["resnet20", "mobilenet_v2_small", "vit_small"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30, help=f"timed runs per form and batch, in turns of {BLOCK}")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    args = parser.parse_args()
    if not x86_without_vnni():
        sys.exit("this CPU has VNNI (or is not x86): onnxruntime's option changes nothing here; run this on an x86 CPU "
                 "without VNNI")
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        accuracy = [row for name in args.models for row in accuracy_rows(name, tmp)]
        speed = speed_rows(args.threads, args.repeats, tmp)
    body = (md_table(["model", "file and session", "top-1 %", "same top-1 as what the file means %",
                      "max output diff"], accuracy)
            + "\n\nWhat the file means: lowbit's PyTorch model for lowbit's files; for onnxruntime's file, the same "
            "file run with no graph optimization (dequantized, then float kernels).\n\n"
            + f"torchvision ResNet-18 at 224x224, {args.threads} threads, medians of {args.repeats} timed runs:\n\n"
            + md_table(["form", "batch", "median ms", "speed vs onnxruntime fp32"], speed))
    publish("deploy-no-vnni", "onnxruntime on an x86 CPU without VNNI: exact integer products or not", body, PAGE,
            not args.no_write)


if __name__ == "__main__":
    np.random.seed(0)
    main()
