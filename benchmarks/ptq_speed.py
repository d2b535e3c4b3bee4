"""Wall time of default post-training quantization at ImageNet scale: lowbit W8A8 (round-to-nearest, MSE weight
ranges, bias correction) on torchvision ResNet-50 and timm DeiT-B at 224x224, next to MCT 2.6.1's plain PTQ on
the same model and images when MCT is installed.

Only time is measured, so the weights and images are random (seeded). Each row also gives the time of one float
forward pass over the calibration images and of lowbit's weight-range search alone, to show where the time goes.
Run: python3 benchmarks/ptq_speed.py (with MCT: from an environment where model_compression_toolkit imports)
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable

import torch
from torch import nn

import lowbit
import peers
from lowbit.models import build_model
from lowbit.observers import static_qparams
from lowbit.spec import weight_spec
from report import md_table, publish, topic_page

MODELS = ("resnet50", "deit_base_patch16_224")


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def weight_range_search(model: nn.Module) -> None:
    """The default 8-bit weight grids of every conv and linear layer (what calibration spends on weights)."""
    spec = weight_spec(8)
    for m in model.modules():
        if type(m) in (nn.Conv2d, nn.Linear):
            static_qparams(m.weight, spec)


def float_forward(model: nn.Module, images: torch.Tensor, batch: int) -> None:
    with torch.no_grad():
        for x in images.split(batch):
            model(x)


def model_of(name: str, size: int) -> nn.Module:
    """The zoo architecture with seeded random weights, in eval mode."""
    torch.manual_seed(0)
    return build_model(name, image_size=size).eval()


def lowbit_row(name: str, images: torch.Tensor, batch: int) -> list:
    """lowbit's default W8A8 on ``name``: quantize time, weight-range search time, one float forward pass."""
    model = model_of(name, images.shape[-1])
    forward = timed(lambda: float_forward(model, images, batch))
    search = timed(lambda: weight_range_search(model))
    total = timed(lambda: lowbit.quantize(model, images, weights_bits=8, activation_bits=8,
                                          calib_images=len(images), batch_size=batch))
    row = [name, f"lowbit {lowbit.__version__} W8A8", total, search, forward]
    print(row, flush=True)
    return row


def mct_row(name: str, model: nn.Module, images: torch.Tensor, batch: int) -> list | None:
    """MCT's plain PTQ at W8A8 on the same model and images; None when MCT is not installed."""
    try:
        version = peers.mct_version()
    except ImportError:
        return None
    try:
        seconds: float | str = timed(lambda: peers.mct_ptq(model, list(images.split(batch)), 8, 8))
    except Exception as exc:  # a peer's failure is a result to report, not a reason to stop
        seconds = f"failed ({failure(exc)})"
    row = [name, f"MCT {version} PTQ", seconds, None, None]
    print(row, flush=True)
    return row


def failure(exc: Exception, limit: int = 100) -> str:
    """An exception as one short table cell: its type and the start of its first line."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--images", type=int, default=64, help="calibration images")
    parser.add_argument("--batch", type=int, default=64, help="calibration batch size (both tools)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--no-mct", action="store_true", help="skip MCT even when it is installed")
    parser.add_argument("--no-write", action="store_true", help="print only; leave the docs page alone")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    images = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows = [lowbit_row(name, images, args.batch) for name in args.models]
    if not args.no_mct:  # after lowbit's rows, so that a slow peer cannot change what lowbit's rows measure
        rows += [row for name in args.models if (row := mct_row(name, model_of(name, args.size), images, args.batch))]
    body = (md_table(["model", "tool", "quantize s", "lowbit weight-range search s", "one float forward s"], rows)
            + f"\n\nRandom weights (seeded), {args.images} random {args.size}x{args.size} calibration images in "
              f"batches of {args.batch}, CPU. lowbit runs its defaults: per-channel symmetric 8-bit weights on MSE-"
              "searched ranges, per-tensor 8-bit activations on min/max ranges, bias correction, round-to-nearest. "
              "The weight-range search column times that search alone over every conv and linear weight; it is part "
              "of the quantize time. The float forward column is one pass of the float model over the calibration "
              "images, the unit of the rest: calibration and bias correction each run the model over those images."
            + (" MCT runs its plain PTQ with its defaults and the IMX500 v1 target platform set to 8-bit kernels and "
               "activations (benchmarks/peers.py)." if any(r[1].startswith("MCT") for r in rows) else ""))
    publish("ptq-speed", f"Default PTQ wall time at {args.size}x{args.size}: ResNet-50 and DeiT-B", body,
            topic_page("ptq_speed"), write=not args.no_write)


if __name__ == "__main__":
    main()
