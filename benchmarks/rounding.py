"""Rounding methods on Fashion-MNIST models: accuracy and wall time of nearest, adaround, brecq, qdrop and eptq,
and (``--mct``) MCT 2.6.1's gradient-based PTQ with Hessian-weighted loss, like for like.

Like for like with MCT: every layer at the row's widths (MCT quantizes every kernel; ``--first-last-bits 8``
departs from that and the table says so), the same total number of optimization steps over the whole model
(``--steps``: lowbit spreads them over its blocks, or layers for adaround; MCT's GPTQ runs whole-model epochs
over the calibration batches) and the same batch size. 1024 calibration images from the training split;
metrics on the full test split. Run: python3 rounding.py --models resnet20 --steps 1100 --mct
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import torch

import lowbit
import peers
from lowbit.algorithms.blocks import find_blocks
from lowbit.config import QuantConfig
from lowbit.data import calibration_batches, load_dataset
from lowbit.graph import prepare
from report import bundled_model, md_table, publish, topic_page

METHODS = ("nearest", "adaround", "brecq", "qdrop", "eptq")
DEFAULT_BITS = ["4/8", "4/4", "3/3", "2/4"]


def width_label(pair: str) -> str:
    """``"4/8"`` -> ``"W4A8"``."""
    return "W{}A{}".format(*pair.split("/"))


def mct_epochs(steps: int, batches: int) -> int:
    """Passes over the calibration batches giving MCT about ``steps`` optimizer steps."""
    return max(1, round(steps / batches))


def steps_per_unit(model, method: str, steps: int, first_last_bits: int | None) -> int:
    """lowbit's steps per block (per layer for adaround) giving about ``steps`` over the whole model."""
    gm = prepare(model, QuantConfig.from_bits(4, 8, first_last_bits=first_last_bits))
    blocks = find_blocks(gm)
    units = sum(len(b.layers) for b in blocks) if method == "adaround" else len(blocks)
    return max(1, round(steps / units))


def run_model(name: str, args, train, test,
              report: Callable[[list[list], list[str], list[str]], None]) -> None:
    """Run every bit-width pair; ``report(rows, verdicts, pairs_left)`` after each, so a long run that is
    stopped keeps the widths it finished."""
    torch.manual_seed(0)
    model = bundled_model(name)
    calib = calibration_batches(train, args.calib_images, args.batch, seed=0)
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
            options = {} if method == "nearest" else {
                "iters": steps_per_unit(model, method, args.steps, args.first_last_bits), "batch_size": args.batch}
            start = time.perf_counter()
            q = lowbit.quantize(model, calib, weights_bits=w, activation_bits=a, first_last_bits=args.first_last_bits,
                                method=method, **options)
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
        q = peers.mct_gptq(model, calib, w, a, epochs=mct_epochs(args.steps, len(calib)))
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
    parser.add_argument("--steps", type=int, default=1100, help="optimization steps over the whole model")
    parser.add_argument("--batch", type=int, default=32, help="calibration and optimization batch, both tools")
    parser.add_argument("--first-last-bits", type=int, help="keep first/last layers at these bits (MCT cannot)")
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
        batches = -(-args.calib_images // args.batch)
        mct_steps = mct_epochs(args.steps, batches) * batches
        widths = "first and last layers at {} bits (MCT keeps them at the row's: not like for like)".format(
            args.first_last_bits) if args.first_last_bits else "every layer at the row's widths, as MCT"
        key = f"rounding-{name}-{args.steps}{subset}" + (f"-fl{args.first_last_bits}" if args.first_last_bits else "")

        def report(rows: list[list], verdicts: list[str], left: list[str], name: str = name) -> None:
            pending = [width_label(pair) for pair in left]
            body = md_table(["model", "bits", "method", "top-1 %", "vs float", "wall s"], rows) + (
                f"\n\nAbout {args.steps} optimization steps over the whole model for each learned method (spread "
                f"over its blocks, or layers for adaround), batch {args.batch}; {widths}; wall time includes "
                "calibration and, for eptq, the Hessian estimation."
                + (f" MCT GPTQ: {mct_steps} steps (epochs x {args.batch}-image batches), Hessian-weighted loss, its "
                   "IMX500 TPC with the kernel and activation widths set to the row's; wall-time ratios are "
                   "measured in this run." if args.mct else "")
                + ("\n\n" + "\n".join(f"- {v}" for v in verdicts) if verdicts else "")
                + (f"\n\nNot yet measured when this was written: {', '.join(pending)}." if pending else ""))
            publish(key, f"Rounding methods: {name} on Fashion-MNIST, {args.steps} steps{subset.replace('-', ', ')}",
                    body, topic_page("rounding"), write=not args.no_write)

        run_model(name, args, train, test, report)


if __name__ == "__main__":
    main()
