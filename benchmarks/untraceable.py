"""Models torch.fx cannot trace whole: accuracy and onnxruntime speed of quantizing their traceable parts.

Each model is given a top-level ``forward`` that torch.fx cannot trace (a branch on the input's size, which
never fires here), so lowbit keeps that ``forward`` and quantizes the traceable submodules as graphs. Against it
in the same run: the same model traced whole (the branch removed: the best lowbit can do), and module swapping
alone (every layer quantizes its own input, batch-norm unfolded, sums unquantized: what is left when no part is
traced). W8A8 and W4A8 round-to-nearest and W4A8 BRECQ, 1024 calibration images from the Fashion-MNIST
training split, top-1 on the full test split in lowbit's PyTorch model and in onnxruntime, and how many
convolutions and matmuls onnxruntime runs on integer kernels; beside them onnxruntime's own ``quantize_static`` on the float ONNX file
(which torch.export writes whether or not torch.fx traces the model). Then the speed of the three forms of
torchvision ResNet-18 at 224x224 (random weights and images: only time is measured) in onnxruntime, beside its
float model and onnxruntime's own int8 model.
Run: python3 benchmarks/untraceable.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
import torchvision
from coverage import kernels
from deploy import agreement, ort_static, outputs, top1
from onnxruntime.quantization import CalibrationMethod
from report import bundled_model, md_table, publish, topic_page
from torch import nn

import lowbit
from lowbit.data import calibration_batches, load_dataset
from lowbit.deploy import export, export_float
from lowbit.deploy.bench import BLOCK, median_seconds
from lowbit.deploy.runtime import OnnxClassifier

PAGE = topic_page("untraceable")
SETTINGS = {"W8A8": dict(weights_bits=8, activation_bits=8), "W4A8": dict(weights_bits=4, activation_bits=8),
            "W4A8 brecq, 300 steps per unit": dict(weights_bits=4, activation_bits=8, method="brecq", iters=300)}


def behind_a_branch(model: nn.Module) -> nn.Module:
    """``model`` with a top-level forward that torch.fx cannot trace (its class is subclassed in place)."""
    base = type(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 8:  # a branch on the input's size: symbolic tracing cannot decide it
            x = F.interpolate(x, scale_factor=2)
        return super(branchy, self).forward(x)

    branchy = type(f"Branchy{base.__name__}", (base,), {"forward": forward})
    model.__class__ = branchy
    return model


def quantize(model: nn.Module, form: str, batches, **kw) -> nn.Module:
    if form == "traced whole":
        return lowbit.quantize(model, batches, **kw)
    branchy = behind_a_branch(model)
    if form == "module swapping alone":  # no part traced: every layer swapped in place
        with mock.patch("lowbit.graph.traceable_parts", lambda module: {}):
            return lowbit.quantize(branchy, batches, **kw)
    return lowbit.quantize(branchy, batches, **kw)


FORMS = ("traced whole", "traceable parts", "module swapping alone")


def accuracy_rows(name: str, tmp: Path) -> list[list]:
    train, _ = load_dataset("fashion-mnist", "train")
    test, _ = load_dataset("fashion-mnist", "test")
    labels = torch.tensor([int(y) for _, y in test])
    batches = calibration_batches(train, 1024, 64, seed=0)
    rows = [[name, "float32", "-", top1(outputs(bundled_model(name), test), labels), "-", "-"]]
    for setting, kw in SETTINGS.items():
        for form in FORMS:
            qmodel = quantize(bundled_model(name), form, batches, **kw)
            path = export(qmodel, tmp / f"{name}.onnx", batches[0][:2]).path
            ours, theirs = outputs(qmodel, test), outputs(OnnxClassifier(path), test)
            rows.append([name, setting, form, f"{top1(ours, labels):.2f} / {top1(theirs, labels):.2f}",
                         agreement(ours, theirs)[0], kernels(path)])
    # the peer works on the float ONNX file, which torch.export writes whatever torch.fx makes of the model
    float_path = export_float(behind_a_branch(bundled_model(name)), tmp / f"{name}_float.onnx", batches[0][:2])
    path = ort_static(float_path, tmp / f"{name}_ort.onnx", batches, CalibrationMethod.MinMax)
    rows.append([name, "W8A8", "onnxruntime quantize_static (MinMax) on the float ONNX file",
                 f"- / {top1(outputs(OnnxClassifier(path), test), labels):.2f}", "-", kernels(path)])
    return rows


def speed_rows(threads: int, repeats: int, tmp: Path) -> list[list]:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, 224, 224, generator=gen) for _ in range(4)]

    def resnet18() -> nn.Module:
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None).eval()

    float_path = export_float(behind_a_branch(resnet18()), tmp / "float.onnx", batches[0][:2])
    peer = ort_static(float_path, tmp / "ort.onnx", batches, CalibrationMethod.MinMax)
    runners = {"onnxruntime fp32": OnnxClassifier(float_path, threads),
               "onnxruntime quantize_static W8A8": OnnxClassifier(peer, threads)}
    counts = {"onnxruntime quantize_static W8A8": kernels(peer)}
    for form in FORMS:
        path = export(quantize(resnet18(), form, batches, weights_bits=8, activation_bits=8),
                      tmp / f"{form.replace(' ', '_')}.onnx", batches[0][:2]).path
        runners[f"lowbit W8A8, {form}"] = OnnxClassifier(path, threads)
        counts[f"lowbit W8A8, {form}"] = kernels(path)
    rows = []
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224, generator=gen)
        times = median_seconds({form: (lambda r=r: r(x)) for form, r in runners.items()}, 2, repeats)
        for form, t in times.items():
            rows.append([form, batch, counts.get(form, "-"), 1000 * t, f"{times['onnxruntime fp32'] / t:.2f}x",
                         f"{times['onnxruntime quantize_static W8A8'] / t:.2f}x"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenet_v2_small"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        accuracy = [row for name in args.models for row in accuracy_rows(name, Path(d))]
        speed = speed_rows(args.threads, args.repeats, Path(d))
    if not PAGE.exists():
        PAGE.write_text("# Models torch.fx cannot trace whole\n\n")
    body = (md_table(["model", "setting", "how it is captured", "top-1 % (PyTorch / onnxruntime)",
                      "same top-1 in onnxruntime %", "integer / float convs and matmuls in onnxruntime"], accuracy)
            + "\n\nSpeed in onnxruntime, torchvision ResNet-18 at 224x224 (random weights; W8A8), "
            f"{args.threads} thread(s), medians of {args.repeats} runs taken in turns of {BLOCK}:\n\n"
            + md_table(["form", "batch", "integer / float convs and matmuls", "median ms", "speed vs fp32",
                        "speed vs onnxruntime int8"], speed)
            + "\n\nWith traceable parts, the layers outside every part quantize only their inputs: a convolution "
            "there runs on integers when its batch-norm is folded (the model's forward applies it to the "
            "convolution's output alone, as ResNet stems do) and a ReLU at most comes before the next grid; a "
            "linear layer runs on integers with a float output (onnxruntime's QGemm), the classifier included.")
    publish("untraceable", "Models torch.fx cannot trace whole: traceable parts against module swapping", body, PAGE,
            not args.no_write)


if __name__ == "__main__":
    main()
