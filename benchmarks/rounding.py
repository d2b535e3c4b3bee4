"""Rounding methods on Fashion-MNIST models: accuracy and wall time of nearest, adaround, brecq, qdrop and eptq,
first and last layers at 8 bits, 1024 calibration images from the training split, full test split.

Run: python3 benchmarks/rounding.py --bits 4/8 4/4 3/3 2/4 --iters 1000 [--mct]
"""

from __future__ import annotations

import argparse
import time

import torch

import lowbit
import peers
from lowbit.data import calibration_batches, load_dataset
from lowbit.models import build_model, bundled_checkpoint, load_checkpoint
from report import md_table, publish

METHODS = ("nearest", "adaround", "brecq", "qdrop", "eptq")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--bits", nargs="+", default=["4/8", "4/4", "3/3", "2/4"], help="W/A pairs")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--mct", action="store_true", help="also run MCT GPTQ with Hessian weights")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_checkpoint(build_model(args.model, num_classes=10, in_channels=1), bundled_checkpoint(args.model))
    train, _ = load_dataset("fashion-mnist", "train")
    test, _ = load_dataset("fashion-mnist", "test")
    calib = calibration_batches(train, args.calib_images, 64, seed=0)
    float_top1 = 100 * lowbit.evaluate(model, test).top1
    rows = [[args.model, "float32", "-", float_top1, 0.0, 0.0]]
    for pair in args.bits:
        w, a = (int(v) for v in pair.split("/"))
        for method in args.methods:
            options = {} if method == "nearest" else {"iters": args.iters}
            start = time.perf_counter()
            q = lowbit.quantize(model, calib, weights_bits=w, activation_bits=a, first_last_bits=8, method=method,
                                **options)
            seconds = time.perf_counter() - start
            top1 = 100 * lowbit.evaluate(q, test).top1
            rows.append([args.model, f"W{w}A{a}", method, top1, top1 - float_top1, seconds])
            print(rows[-1], flush=True)
        if args.mct:
            start = time.perf_counter()
            steps_per_epoch = len(calib)
            q = peers.mct_gptq(model, calib, w, a, epochs=max(1, args.iters // steps_per_epoch))
            seconds = time.perf_counter() - start
            top1 = 100 * lowbit.evaluate(q, test).top1
            rows.append([args.model, f"W{w}A{a}", f"MCT {peers.mct_version()} GPTQ+Hessian", top1, top1 - float_top1,
                         seconds])
            print(rows[-1], flush=True)
    body = md_table(["model", "bits", "method", "top-1 %", "vs float", "wall s"], rows) + (
        f"\n\n{args.iters} optimization steps per block (per layer for adaround), batch 32; first and last layers at "
        "8 bits; wall time includes calibration and, for eptq, the Hessian estimation.")
    publish(f"rounding-{args.model}", f"Rounding methods: {args.model} on Fashion-MNIST", body,
            write=not args.no_write)


if __name__ == "__main__":
    main()
