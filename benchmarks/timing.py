"""Wall time at ImageNet scale on torchvision ResNet-18 at 224x224, against MCT 2.6.1 in the same run:

- ``rounding``: learned rounding (brecq, eptq) against MCT's GPTQ with Hessian-weighted loss, same images, batch
  size and number of optimization steps over the whole model;
- ``datafree``: lowbit's image synthesis from batch-norm statistics against MCT's data generation (its DGH
  implementation), same number of images, batch size and steps per batch.

Only time is measured, so the weights and images are random (seeded). Made for a GPU; on a CPU use small
settings to check that it runs (``--steps 20 --images 64 --size 64 --synth-images 8 --synth-iters 2 --no-write``).
Run: python3 benchmarks/timing.py --part rounding datafree --mct
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torchvision

import lowbit
import peers
from lowbit.data.synthesize import IMAGENET_MEAN, IMAGENET_STD, SynthOptions, synthesize
from report import md_table, publish, topic_page
from rounding import mct_epochs, steps_per_unit


def timed(fn) -> float:
    """Seconds ``fn()`` takes, waiting for queued GPU work on both sides."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def ratios(rows: list[list]) -> str:
    """Each lowbit row's wall time as a multiple of the last (MCT's) row."""
    return "\n".join(f"- {r[0]}: {r[-1] / rows[-1][-1]:.2f}x MCT's wall time" for r in rows[:-1])


def rounding_section(model, device: str, args) -> None:
    w, a = (int(v) for v in args.bits.split("/"))
    images = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    batches = list(images.split(args.batch))
    rows = []
    for method in args.methods:
        iters = steps_per_unit(model, method, args.steps, 8)
        seconds = timed(lambda m=method: lowbit.quantize(model, images, weights_bits=w, activation_bits=a,
                                                         first_last_bits=8, method=m, iters=iters,
                                                         batch_size=args.batch, calib_images=args.images))
        rows.append([f"lowbit {method}", f"{iters} per block", seconds])
        print(rows[-1], flush=True)
    if args.mct:
        epochs = mct_epochs(args.steps, len(batches))
        seconds = timed(lambda: peers.mct_gptq(model, [b.to(device) for b in batches], w, a, epochs=epochs))
        rows.append([f"MCT {peers.mct_version()} GPTQ+Hessian", f"{epochs * len(batches)} in all", seconds])
        print(rows[-1], flush=True)
    body = (md_table(["tool", "steps", "wall s"], rows)
            + f"\n\nResNet-18 (torchvision, random weights), {args.images} random {args.size}x{args.size} images, "
              f"W{w}A{a} with first and last layers at 8 bits, batch {args.batch}, about {args.steps} optimization "
              f"steps over the whole model on both sides (lowbit's split over its blocks), on {device}; wall time "
              "includes calibration and, for eptq, the Hessian estimation."
            + ("\n\n" + ratios(rows) if args.mct else ""))
    publish(f"timing-resnet18-{device}", f"Learned-rounding wall time: ResNet-18 at {args.size}x{args.size}, {device}",
            body, topic_page("rounding"), write=not args.no_write)


def datafree_section(model, device: str, args) -> None:
    shape = (3, args.size, args.size)
    options = SynthOptions(iters=args.synth_iters, batch_size=args.synth_batch, seed=0)
    rows = [["lowbit synthesize", timed(lambda: synthesize(model, args.synth_images, shape, IMAGENET_MEAN,
                                                           IMAGENET_STD, options))]]
    print(rows[-1], flush=True)
    if args.mct:
        rows.append([f"MCT {peers.mct_version()} data generation",
                     timed(lambda: peers.mct_generate(model, args.synth_images, shape, IMAGENET_MEAN, IMAGENET_STD,
                                                      args.synth_iters, batch_size=args.synth_batch))])
        print(rows[-1], flush=True)
    body = (md_table(["tool", "wall s"], rows)
            + f"\n\nResNet-18 (torchvision, random weights, batch-norm statistics at their initial values), "
              f"{args.synth_images} images of {args.size}x{args.size} in batches of {args.synth_batch}, "
              f"{args.synth_iters} steps per batch on both sides, on {device}. Only time is compared here; what the "
              "images are worth for calibration is measured on real weights in the sections above."
            + ("\n\n" + ratios(rows) if args.mct else ""))
    publish(f"timing-synthesis-resnet18-{device}",
            f"Data-free synthesis wall time: ResNet-18 at {args.size}x{args.size}, {device}",
            body, topic_page("datafree"), write=not args.no_write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", nargs="+", choices=["rounding", "datafree"], default=["rounding", "datafree"])
    parser.add_argument("--methods", nargs="+", default=["brecq", "eptq"])
    parser.add_argument("--steps", type=int, default=20000, help="optimization steps over the whole model")
    parser.add_argument("--batch", type=int, default=32, help="calibration and optimization batch, both tools")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--bits", default="4/4", help="W/A pair")
    parser.add_argument("--synth-images", type=int, default=256)
    parser.add_argument("--synth-iters", type=int, default=SynthOptions().iters, help="steps per batch")
    parser.add_argument("--synth-batch", type=int, default=64)
    parser.add_argument("--mct", action="store_true", help="also time MCT")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    if "rounding" in args.part:
        rounding_section(model, device, args)
    if "datafree" in args.part:
        datafree_section(model, device, args)


if __name__ == "__main__":
    main()
