"""How far a codec's W8A8 BD-rate moves with the calibration crops drawn and with the photos it is measured on.

For each bundled codec: W8A8 round-to-nearest (the codec defaults) calibrated on crops drawn with several seeds,
each evaluated at all rate points on the held-out photos from real bitstreams, BD-rate against FP32; then, for
the first seed, the BD-rate of each held-out photo alone. The spread is what a difference between two rows of
the quantized tables has to exceed before it says anything.
Run: OMP_NUM_THREADS=1 python3 benchmarks/codec_spread.py [--seeds 8] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict

import torch
from codec_quant import CALIB_CROPS, calibration_set
from report import md_table, publish, topic_page

import lowbit
from lowbit.codec import bd_rate, evaluate_codec, open_codec
from lowbit.codec.images import read_image
from lowbit.codec.photos import held_out_photos
from lowbit.codec.quantize_run import calibration_crop
from lowbit.codec.zoo import BUNDLED
from lowbit.config import QuantConfig
from lowbit.errors import LowbitError


def curve(results: list, index: int | None = None) -> tuple[list[float], list[float]]:
    """(bpp, PSNR) at each rate point: the means over the photos, or photo ``index`` alone."""
    points = [r.summary() if index is None else asdict(r.images[index]) for r in results]
    return [p["bpp"] for p in points], [p["psnr"] for p in points]


def photo_bd_rate(fp32: list, quantized: list, index: int) -> str:
    """One photo's BD-rate, or why it has none (its PSNR need not rise with the rate point)."""
    try:
        return f"{bd_rate(*curve(fp32, index), *curve(quantized, index)):+.2f}"
    except LowbitError as exc:
        return f"none ({exc})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="calibration draws per codec")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks/codec.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = [(p.name, read_image(p)) for p in held_out_photos()]
    seed_rows, photo_rows = [], []
    crops = ", ".join(f"{calibration_crop(open_codec(name, 1).stride)} pixels for {name}" for name in BUNDLED)
    for codec_name, (_, qualities) in BUNDLED.items():
        codecs = [open_codec(codec_name, q) for q in range(1, qualities + 1)]
        fp32 = [evaluate_codec(c.model, images, c.stride) for c in codecs]
        anchor = curve(fp32)
        rates = []
        for seed in range(args.seeds):
            calib = calibration_set(codecs[0].stride, seed)
            quantized = [evaluate_codec(lowbit.quantize(c.model, calib, QuantConfig.from_bits(8, 8, seed=seed)),
                                        images, c.stride) for c in codecs]
            rates.append(bd_rate(*anchor, *curve(quantized)))
            print(codec_name, seed, f"{rates[-1]:+.2f}", flush=True)
            if seed == 0:
                for index, (name, _) in enumerate(images):
                    photo_rows.append([codec_name, name, photo_bd_rate(fp32, quantized, index)])
        seed_rows.append([codec_name, " / ".join(f"{r:+.2f}" for r in rates), f"{statistics.mean(rates):+.2f}",
                          f"{statistics.stdev(rates):.2f}", f"{min(rates):+.2f} to {max(rates):+.2f}"])
    body = "\n\n".join([
        md_table(["codec", "W8A8 BD-rate % vs FP32, one per calibration seed", "mean", "standard deviation",
                  "range"], seed_rows),
        "The same W8A8 codec (calibration seed 0), BD-rate of each held-out photo alone:",
        md_table(["codec", "photo", "W8A8 BD-rate % vs FP32"], photo_rows),
        f"W8A8 round-to-nearest with the codec defaults; calibration: {CALIB_CROPS} random crops ({crops}) of "
        f"the training photos, drawn with seeds 0 to {args.seeds - 1} (the quantized tables use seed 0); "
        "evaluation: the four held-out photos, real bitstreams, all rate points, BD-rate by PCHIP as elsewhere on "
        "this page.",
    ])
    publish("codec-spread", "How much a W8A8 codec's BD-rate moves with calibration draw and photo", body,
            topic_page("codec"), write=not args.no_write)


if __name__ == "__main__":
    main()
