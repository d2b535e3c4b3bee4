"""Bit-width table of the bundled ResNet-20 on Fashion-MNIST, with torch.ao and MCT side by side.

1024 calibration images from the training split, metrics on the full 10k test split. Every lowbit row is
saved, reloaded, and evaluated from the reloaded file. Run: python3 benchmarks/bitwidths.py
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

import lowbit
import peers
from lowbit.run import float_file_size
from lowbit.data import calibration_batches, load_dataset
from lowbit.models import build_model, bundled_checkpoint, load_checkpoint
from report import md_table, publish, topic_page

HEADERS = ["tool", "weights", "activations", "top-1 %", "precision %", "recall %", "F1 %", "file", "x float32",
           "quantize s"]


def row(tool: str, w: str, a: str, metrics, size: int | None, float_size: int, seconds: float) -> list:
    return [tool, w, a, 100 * metrics.top1, 100 * metrics.precision, 100 * metrics.recall, 100 * metrics.f1,
            f"{size / 1024:.1f} KB" if size else "-", f"{size / float_size:.3f}" if size else "-", seconds]


def lowbit_row(model, calib, test, tmp: Path, label: str, **kw) -> tuple[list, object]:
    start = time.perf_counter()
    q = lowbit.quantize(model, calib, **kw)
    seconds = time.perf_counter() - start
    path = lowbit.save(q, tmp / f"{label}.lowbit")
    reloaded = lowbit.load(path)
    return [path.stat().st_size, seconds], lowbit.evaluate(reloaded, test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--no-write", action="store_true", help="print only; leave the docs page alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    model = load_checkpoint(build_model("resnet20", num_classes=10, in_channels=1), bundled_checkpoint("resnet20"))
    train, _ = load_dataset("fashion-mnist", "train")
    test, _ = load_dataset("fashion-mnist", "test")
    calib = calibration_batches(train, args.calib_images, 64, seed=0)
    float_size = float_file_size(model)
    float_metrics = lowbit.evaluate(model, test)
    rows = [row("float32", "32", "32", float_metrics, float_size, float_size, 0.0)]
    configs = [(f"W{b}A{b}", dict(weights_bits=b, activation_bits=b)) for b in (16, 8, 4, 2)]
    configs += [(f"W{b}", dict(weights_bits=b, activation_bits=None)) for b in (16, 8, 4, 2)]
    configs += [("W4A8", dict(weights_bits=4, activation_bits=8)), ("W2A8", dict(weights_bits=2, activation_bits=8)),
                ("FP16", dict(weights_bits="fp16", activation_bits="fp16")),
                ("W8A16dyn", dict(weights_bits=8, activation_bits=16, dynamic_activations=True))]
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for label, kw in configs:
            (size, seconds), metrics = lowbit_row(model, calib, test, Path(d), label, **kw)
            a = kw["activation_bits"]
            a_text = "float" if a is None else f"{a}" + (" dynamic" if kw.get("dynamic_activations") else "")
            rows.append(row("lowbit", str(kw["weights_bits"]), a_text, metrics, size, float_size, seconds))
            results[label] = metrics
            if label == "W8A8":
                w8a8_seconds = seconds
            print(rows[-1], flush=True)
    start = time.perf_counter()
    ao = peers.torchao_fx_int8_ptq(model, calib)
    rows.append(row("torch.ao FX (x86)", "8", "8", lowbit.evaluate(ao, test), None, float_size,
                    time.perf_counter() - start))
    print(rows[-1], flush=True)
    for w, a in ((8, 8), (4, 8), (4, 4), (2, 8)):
        start = time.perf_counter()
        q = peers.mct_ptq(model, calib, w, a)
        seconds = time.perf_counter() - start
        metrics = lowbit.evaluate(q, test)
        rows.append(row(f"MCT {peers.mct_version()}", str(w), str(a), metrics, None, float_size, seconds))
        results[f"MCT W{w}A{a}"] = metrics
        print(rows[-1], flush=True)
    gap8 = 100 * (results["W8A8"].top1 - float_metrics.top1)
    lowbit4, mct4 = 100 * results["W4A8"].top1, 100 * results["MCT W4A8"].top1
    verdict = [
        f"- W8A8: {gap8:+.2f} points against float; {w8a8_seconds:.1f} s to quantize, calibration on "
        f"{args.calib_images} images included.",
        f"- W4A8 round-to-nearest: lowbit {lowbit4:.2f}% and MCT {mct4:.2f}% "
        + ("(a tie)." if abs(lowbit4 - mct4) < 0.005 else f"(lowbit {lowbit4 - mct4:+.2f} points)."),
    ]
    body = (md_table(HEADERS, rows) + "\n\n" + "\n".join(verdict) + "\n\n"
            "lowbit rows are evaluated after saving and reloading the `.lowbit` file; `x float32` compares against the "
            "float32 safetensors file. Peers run on the same model, the same calibration batches and the same test "
            "set in the same run; MCT keeps its default methods (per-channel symmetric weights, power-of-two "
            "activation thresholds) with bits set through its target platform capabilities. Peer files are not "
            "saved (no packed format).")
    publish("bitwidths", "Bit widths: ResNet-20 on Fashion-MNIST (lowbit, torch.ao, MCT)", body,
            topic_page("bitwidths"), write=not args.no_write)


if __name__ == "__main__":
    main()
