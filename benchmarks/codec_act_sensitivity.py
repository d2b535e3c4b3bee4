"""Where a codec's W8A8 loss comes from: each activation raised to 16 bits alone, and other activation ranges.

For one rate point of each bundled codec, W8A8 round-to-nearest (the default: min/max activation ranges) against
FP32, then the same model with a single layer's input activation at 16 bits (every other one at 8), with all of
them at 16 bits, with the weights at 16 bits, and with MSE or percentile activation ranges instead of min/max.
Evaluated from real bitstreams on the first four training photos (where choices are made; the held-out photos
stay for the main table), calibrated on 64 random 128x128 crops of the training photos, as in codec_quant.py.
Run: OMP_NUM_THREADS=1 python3 benchmarks/codec_act_sensitivity.py [--codecs NAME ...] [--quality Q] [--no-write]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from codec_quant import CALIB_CROPS, SEED, calibration_set
from report import md_table, publish, topic_page

import lowbit
from lowbit.codec import evaluate_codec, open_codec
from lowbit.codec.images import read_image
from lowbit.codec.photos import training_photos
from lowbit.codec.quantize_run import calibration_crop
from lowbit.codec.zoo import BUNDLED
from lowbit.config import Override, QuantConfig
from lowbit.layers import quant_layers

PHOTOS = 4


DEFAULT = QuantConfig.from_bits(8, 8, seed=SEED)


def variants(qmodel: torch.nn.Module) -> list[tuple[str, QuantConfig]]:
    """The default W8A8 config's one-change variants, in the table's order (``qmodel``: the default's model)."""
    wide = replace(DEFAULT.activations, bits=16)
    rows = [("W8A8, MSE activation ranges", QuantConfig.from_bits(8, 8, seed=SEED, activation_observer="mse")),
            ("W8A8, percentile activation ranges",
             QuantConfig.from_bits(8, 8, seed=SEED, activation_observer="percentile")),
            ("W16A8 (weights at 16 bits)", QuantConfig.from_bits(16, 8, seed=SEED)),
            ("W8A16 (every activation at 16 bits)", QuantConfig.from_bits(8, 16, seed=SEED))]
    for name, _ in quant_layers(qmodel):
        rows.append((f"W8A8, {name} input at 16 bits",
                     QuantConfig.from_bits(8, 8, seed=SEED, overrides=(Override(name, activations=wide),))))
    return rows


def run_codec(name: str, quality: int, images, write: bool) -> None:
    codec = open_codec(name, quality)
    crop = calibration_crop(codec.stride)
    calib = calibration_set(codec.stride)
    fp32 = evaluate_codec(codec.model, images, codec.stride).summary()
    rows = [[f"{name} q{quality}", "FP32", f"{fp32['bpp']:.4f}", f"{fp32['psnr']:.3f}", "-", "-"]]
    default = lowbit.quantize(codec.model, calib, DEFAULT)
    for label, config in [("W8A8 (min/max activation ranges)", None), *variants(default)]:
        model = default if config is None else lowbit.quantize(codec.model, calib, config)
        s = evaluate_codec(model, images, codec.stride).summary()
        rows.append([f"{name} q{quality}", label, f"{s['bpp']:.4f}", f"{s['psnr']:.3f}",
                     f"{100 * (s['bpp'] / fp32['bpp'] - 1):+.2f}", f"{s['psnr'] - fp32['psnr']:+.4f}"])
        print(rows[-1], flush=True)
    body = "\n\n".join([
        md_table(["codec", "variant", "bpp", "PSNR dB", "bpp vs FP32 %", "PSNR vs FP32 dB"], rows),
        f"Round-to-nearest, codec defaults otherwise (channel equalization on). Evaluation: the first {PHOTOS} "
        f"training photos, real bitstreams; calibration: {CALIB_CROPS} random {crop}x{crop} crops (seed {SEED}) of "
        "the training photos. A layer's row raises only its input activation to 16 bits.",
    ])
    publish(f"codec-act-sensitivity-{name}", f"Where W8A8 loses: {name} q{quality}, one activation at a time", body,
            topic_page("codec"), write=write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codecs", nargs="+", choices=list(BUNDLED), default=list(BUNDLED))
    parser.add_argument("--quality", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = [(p.name, read_image(p)) for p in training_photos()[:PHOTOS]]
    for name in args.codecs:
        run_codec(name, args.quality, images, not args.no_write)


if __name__ == "__main__":
    main()
