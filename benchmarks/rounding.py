"""Rounding methods on Fashion-MNIST models: accuracy and wall time of nearest, adaround, brecq, qdrop and eptq,
and (``--mct``) MCT 2.6.1's gradient-based PTQ with Hessian-weighted loss at a matched number of steps.

First and last layers at 8 bits; 1024 calibration images from the training split; metrics on the full test
split. MCT's GPTQ optimizes the whole network at once, so its step count is epochs x calibration batches,
matched to lowbit's steps per block. Run: python3 benchmarks/rounding.py --models resnet20 --iters 300 --mct
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import torch

import lowbit
import peers
from lowbit.data import calibration_batches, load_dataset
from report import bundled_model, md_table, publish

METHODS = ("nearest", "adaround", "brecq", "qdrop", "eptq")
DEFAULT_BITS = ["4/8", "4/4", "3/3", "2/4"]
CALIB_BATCH = 64


def width_label(pair: str) -> str:
    """``"4/8"`` -> ``"W4A8"``."""
    return "W{}A{}".format(*pair.split("/"))


def mct_epochs(steps: int, batches: int) -> int:
    """Passes over the calibration batches giving MCT about ``steps`` optimizer steps."""
    return max(1, round(steps / batches))


def run_model(name: str, args, train, test,
              report: Callable[[list[list], list[str], list[str]], None]) -> None:
    """Run every bit-width pair; ``report(rows, verdicts, pairs_left)`` after each, so a long run that is
    stopped keeps the widths it finished."""
    torch.manual_seed(0)
    model = bundled_model(name)
    calib = calibration_batches(train, args.calib_images, CALIB_BATCH, seed=0)
    float_top1 = 100 * lowbit.evaluate(model, test).top1
    rows = [[name, "float32", "-", float_top1, 0.0, 0.0]]
    verdicts: list[str] = []

    def record(bits: str, method: str, q, seconds: float) -> float:
        top1 = 100 * lowbit.evaluate(q, test).top1
        rows.append([name, bits, method, top1, top1 - float_top1, seconds])
        print(rows[-1], flush=True)
        return top1

    for k, pair in enumerate(args.bits):
        w, a = (int(v) for v in pair.split("/"))
        best = (-1.0, "", 0.0)
        for method in args.methods:
            options = {} if method == "nearest" else {"iters": args.iters}
            start = time.perf_counter()
            q = lowbit.quantize(model, calib, weights_bits=w, activation_bits=a, first_last_bits=8, method=method,
                                **options)
            seconds = time.perf_counter() - start
            best = max(best, (record(f"W{w}A{a}", method, q, seconds), method, seconds))
        if args.mct:
            verdicts.append(run_mct(model, calib, w, a, best, args, record))
            print(verdicts[-1], flush=True)
        report(rows, verdicts, args.bits[k + 1 :])


def run_mct(model, calib, w: int, a: int, best: tuple[float, str, float], args, record) -> str:
    """MCT GPTQ at the row's widths; the verdict line comparing it with lowbit's best method."""
    start = time.perf_counter()
    try:
        q = peers.mct_gptq(model, calib, w, a, epochs=mct_epochs(args.iters, len(calib)))
    except Exception as exc:  # a peer that cannot take the model is reported, not fatal
        return f"W{w}A{a}: MCT GPTQ failed ({type(exc).__name__}: {str(exc)[:200]})"
    seconds = time.perf_counter() - start
    mct_top1 = record(f"W{w}A{a}", f"MCT {peers.mct_version()} GPTQ+Hessian", q, seconds)
    return (f"W{w}A{a}: best lowbit method ({best[1]}, {best[0]:.2f}%) is "
            f"{'at least as accurate as' if best[0] >= mct_top1 else 'less accurate than'} MCT "
            f"({mct_top1:.2f}%) in {best[2] / seconds:.2f}x its wall time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["resnet20", "mobilenet_v2_small", "vit_small"])
    parser.add_argument("--bits", nargs="+", default=DEFAULT_BITS, help="W/A pairs")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--iters", type=int, default=1000)
    parser.add_argument("--calib-images", type=int, default=1024)
    parser.add_argument("--mct", action="store_true", help="also run MCT GPTQ with Hessian weights")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # MCT's per-iteration progress bars would flood the log
    train, _ = load_dataset("fashion-mnist", "train")
    test, _ = load_dataset("fashion-mnist", "test")
    # A run over other widths than the default set gets a section of its own rather than replacing the full table.
    subset = "" if args.bits == DEFAULT_BITS else "-" + "-".join(width_label(p) for p in args.bits)
    for name in args.models:
        batches = -(-args.calib_images // CALIB_BATCH)
        mct_steps = mct_epochs(args.iters, batches) * batches

        def report(rows: list[list], verdicts: list[str], left: list[str], name: str = name) -> None:
            widths = [width_label(pair) for pair in left]
            body = md_table(["model", "bits", "method", "top-1 %", "vs float", "wall s"], rows) + (
                f"\n\n{args.iters} optimization steps per block (per layer for adaround), batch 32; first and last "
                "layers at 8 bits; wall time includes calibration and, for eptq, the Hessian estimation."
                + (f" MCT GPTQ: {mct_steps} steps over the whole network (epochs x {CALIB_BATCH}-image batches), "
                   "Hessian-weighted loss, its IMX500 TPC with the kernel and activation widths set to the row's; "
                   "wall-time ratios are measured in this run." if args.mct else "")
                + ("\n\n" + "\n".join(f"- {v}" for v in verdicts) if verdicts else "")
                + (f"\n\nNot yet measured when this was written: {', '.join(widths)}." if widths else ""))
            publish(f"rounding-{name}-{args.iters}{subset}", f"Rounding methods: {name} on Fashion-MNIST, "
                    f"{args.iters} steps{subset.replace('-', ', ')}", body, write=not args.no_write)

        run_model(name, args, train, test, report)


if __name__ == "__main__":
    main()
