"""A transformer's residual stream quantized (the default) or left float (``--float-residual-stream``).

The bundled vit_small at W8A8, W4A8 and W4A4, round-to-nearest and BRECQ, on the same 1024 calibration images of
the Fashion-MNIST training split; top-1 on the full test split. With ``--mct``, MCT's default PTQ (which quantizes
the sums) beside the round-to-nearest rows, same images. With the stream float, the adds whose sums reach
only LayerNorms and further adds keep no grid; every linear layer and attention matmul still reads quantized
inputs. At W8A8 both forms are also exported to ONNX and run in onnxruntime: agreement with lowbit's PyTorch
model, integer kernels, file size and the median latency at batch 64 (the float adds against onnxruntime's
integer ones).
Run: python3 residual_stream.py --mct (MCT installed)
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import peers
import torch
from coverage import kernels
from deploy import agreement, outputs, top1
from report import bundled_model, fashion_mnist_splits, md_table, publish, topic_page

import lowbit
from lowbit.data import calibration_batches
from lowbit.deploy import export
from lowbit.deploy.bench import median_seconds
from lowbit.deploy.runtime import OnnxClassifier

SETTINGS = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A4": (4, 4)}
METHODS = ("nearest", "brecq")
NOTE = ('The stream is what each block adds its attention and MLP outputs to; every block reads it through a '
        'LayerNorm, whose output keeps its grid either way, so leaving the sums float takes no integer kernel'
        ' away (onnxruntime runs the layer norms in float in both files); the 4-bit grids on those sums are '
        'what cost accuracy at 4-bit activations. Latency: one thread, medians of the two files timed in '
        'turns.')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small")
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=300, help="BRECQ steps per block")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--mct", action="store_true", help="MCT's default PTQ beside the round-to-nearest rows")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    train, test = fashion_mnist_splits()
    labels = torch.tensor([y for _, y in test])
    model = bundled_model(args.model)
    calib = calibration_batches(train, args.calib_images, 64, seed=0)
    float_top1 = top1(outputs(model, test), labels)
    rows, deployed = [], {}
    for setting, (wbits, abits) in SETTINGS.items():
        for method in METHODS:
            options = {"iters": args.iters} if method != "nearest" else {}
            accuracy = {}
            for stream in (False, True):
                qmodel = lowbit.quantize(model, calib, weights_bits=wbits, activation_bits=abits, method=method,
                                         float_residual_stream=stream, **options)
                logits = outputs(qmodel, test)
                accuracy[stream] = top1(logits, labels)
                if setting == "W8A8" and method == "nearest":
                    deployed[stream] = (qmodel, logits)
            mct = top1(outputs(peers.mct_ptq(model, calib, wbits, abits), test), labels) \
                if args.mct and method == "nearest" else None
            gain = f"{accuracy[True] - accuracy[False]:+.2f}"
            rows.append([setting, method, accuracy[False], accuracy[True], gain, mct])
            print(rows[-1], flush=True)
    runtime_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        example = calib[0][:2]
        x = calib[0]
        sessions = {}
        for stream, (qmodel, logits) in deployed.items():
            report = export(qmodel, Path(tmp) / f"{stream}.onnx", example)
            session = OnnxClassifier(report.path, threads=torch.get_num_threads())
            same, diff = agreement(logits, outputs(session, test))
            sessions[stream] = session
            runtime_rows.append(["float" if stream else "quantized (default)", same, f"{diff:.3f}",
                                 kernels(report.path), f"{report.bytes / 1024:.0f} KB"])
        times = median_seconds({stream: (lambda s=s: s(x)) for stream, s in sessions.items()}, 2, args.repeats)
        for row, stream in zip(runtime_rows, sessions):
            row.append(f"{1000 * times[stream]:.1f}")
    body = (f"Float top-1: {float_top1:.2f}%. BRECQ: {args.iters} steps per block, batch 32.\n\n"
            + md_table(["setting", "method", "stream quantized (default) %", "stream float %", "difference",
                        f"MCT {peers.mct_version()} PTQ defaults %" if args.mct else "MCT (not run)"], rows)
            + "\n\nW8A8 round-to-nearest in onnxruntime (CPU provider, batch 64 for latency):\n\n"
            + md_table(["residual stream", "same top-1 as PyTorch %", "max output diff",
                        "integer / float convs and matmuls", "ONNX file", "median ms"], runtime_rows)
            + "\n\n" + NOTE)
    publish(f"residual-stream-{args.model}", f"Residual stream quantized or float: {args.model} on Fashion-MNIST",
            body, topic_page("bitwidths"), write=not args.no_write)


if __name__ == "__main__":
    main()
