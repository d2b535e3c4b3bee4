"""Wall time of learned rounding at ImageNet scale: brecq and eptq on torchvision ResNet-18 at 224x224 against
MCT 2.6.1's GPTQ with Hessian-weighted loss, same images and matched steps, in the same run.

Only time is measured, so the weights and images are random (seeded). Made for a GPU; on a CPU use small
settings to check that it runs (``--iters 2 --images 64 --size 64 --no-write``).
Run: python3 benchmarks/timing.py --iters 20000 --images 1024 --mct
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torchvision

import lowbit
import peers
from report import md_table, publish, topic_page
from rounding import CALIB_BATCH, mct_epochs


def timed(fn) -> float:
    """Seconds ``fn()`` takes, waiting for queued GPU work on both sides."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=["brecq", "eptq"])
    parser.add_argument("--iters", type=int, default=20000, help="optimization steps per block")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--bits", default="4/4", help="W/A pair")
    parser.add_argument("--mct", action="store_true", help="also time MCT GPTQ with Hessian weights")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    w, a = (int(v) for v in args.bits.split("/"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    images = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    batches = list(images.split(CALIB_BATCH))
    rows = []
    for method in args.methods:
        seconds = timed(lambda m=method: lowbit.quantize(model, images, weights_bits=w, activation_bits=a,
                                                         first_last_bits=8, method=m, iters=args.iters,
                                                         calib_images=args.images))
        rows.append([f"lowbit {method}", f"{args.iters} per block", seconds])
        print(rows[-1], flush=True)
    if args.mct:
        epochs = mct_epochs(args.iters, len(batches))
        seconds = timed(lambda: peers.mct_gptq(model, [b.to(device) for b in batches], w, a, epochs=epochs))
        rows.append([f"MCT {peers.mct_version()} GPTQ+Hessian", f"{epochs * len(batches)} in all", seconds])
        print(rows[-1], flush=True)
    ratios = [f"- {r[0]}: {r[2] / rows[-1][2]:.2f}x MCT's wall time" for r in rows[:-1]] if args.mct else []
    body = (md_table(["tool", "steps", "wall s"], rows)
            + f"\n\nResNet-18 (torchvision, random weights), {args.images} random {args.size}x{args.size} images, "
              f"W{w}A{a} with first and last layers at 8 bits, on {device}; wall time includes calibration and, "
              "for eptq, the Hessian estimation. MCT's GPTQ optimizes the whole network at once, so its steps are "
              f"epochs x {CALIB_BATCH}-image batches, matched to lowbit's steps per block."
            + ("\n\n" + "\n".join(ratios) if ratios else ""))
    publish(f"timing-resnet18-{device}", f"Learned-rounding wall time: ResNet-18 at {args.size}x{args.size}, {device}",
            body, topic_page("rounding"), write=not args.no_write)


if __name__ == "__main__":
    main()
