"""Quantized learned codecs: every variant of each bundled codec, at every rate point, on the held-out photos.

Rows per codec and rate point: FP32; FP16; INT8 light (8-bit per-channel weights, 16-bit dynamic per-tensor
activations); INT8 entropy-only (the hyperprior networks quantized, transforms float; hyperprior codecs only); W8A8
static and W4A8, each with nearest and with learned rounding (QDrop: a label-free reconstruction objective,
activation step sizes learned too); W8A8 and W4A8 round-to-nearest, and W4A8 QDrop, followed by
quantization-aware fine-tuning on the codec's own rate-distortion loss (``lowbit codec finetune``), free or holding
the starting model's rate (``--hold-rate``), beside the float
codec trained for the same steps on the same crops (what the extra training alone is worth); and the peer,
onnxruntime's dynamic int8 quantization of the same transforms.
Every figure comes from real bitstreams; BD-rate is against the FP32 curve of the same codec (positive: more bits
for the same PSNR). Calibration: random crops of the codecs' training photos, of the side ``lowbit codec quantize``
picks for the codec (QDrop steps hold as many pixels whatever the side); evaluation: the held-out
photos.
Each codec is its own section, so the two can run as two single-threaded processes.
Run: OMP_NUM_THREADS=1 python3 benchmarks/codec_quant.py [--codecs NAME ...] [--no-write] [--iters N] [--qat-steps N]
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from codec import figures
from codec_peer import int8_files_bytes, ort_dynamic_int8
from report import PAGES, md_table, publish, topic_page

import lowbit
from lowbit.codec import bd_rate, evaluate_codec, open_codec
from lowbit.codec.finetune import CodecFinetuneOptions, finetune_codec, split_photos
from lowbit.codec.images import read_image, to_uint8
from lowbit.codec.photos import held_out_photos, training_photos
from lowbit.codec.quantize_run import MIN_CALIBRATION_CROP, calibration_crop, calibration_crops
from lowbit.codec.rd_plot import plot_rd_curves
from lowbit.codec.task import scope_overrides
from lowbit.codec.train import CodecTrainOptions, train_codec
from lowbit.codec.zoo import BUNDLED
from lowbit.config import QuantConfig
from lowbit.errors import LowbitError
from lowbit.report import human_bytes

CALIB_CROPS, SEED = 64, 0
LEARNED_BATCH = 8  # crops of the smallest calibration side per learned-rounding step
LIGHT = {"weights_bits": 8, "activation_bits": 16, "dynamic_activations": True}


@dataclass(frozen=True)
class Variant:
    name: str
    settings: dict[str, Any] | None = None  # lowbit.quantize keywords; None: the float codec itself
    entropy_only: bool = False
    peer: bool = False
    finetune: bool = False  # quantization-aware fine-tuning after quantizing (lowbit codec finetune)
    hold_rate: bool = False  # ... holding the starting model's rate (lowbit codec finetune --hold-rate)
    float_training: bool = False  # the float codec trained for as many steps: the reference for fine-tuning
    targets: dict[str, float] = field(default_factory=dict)


@functools.cache
def calibration_set(stride: int, seed: int = SEED) -> torch.Tensor:
    """The codec's calibration crops, at the side ``lowbit codec quantize`` picks for its stride by default (drawn
    once per stride and seed; nothing modifies them)."""
    return calibration_crops(training_photos(), CALIB_CROPS, calibration_crop(stride), seed)


def learned_batch(crop: int) -> int:
    """Crops per learned-rounding step: as many pixels per step whatever the crop side."""
    return max(1, LEARNED_BATCH * MIN_CALIBRATION_CROP ** 2 // crop ** 2)


def learned(weights_bits: int, iters: int, crop: int) -> dict[str, Any]:
    """QDrop at these weight bits and 8-bit activations."""
    return {"weights_bits": weights_bits, "activation_bits": 8, "method": "qdrop",
            "method_options": {"iters": iters, "batch_size": learned_batch(crop)}}


def variants(iters: int, qat_steps: int, crop: int) -> list[Variant]:
    learned_w8, learned_w4 = learned(8, iters, crop), learned(4, iters, crop)
    return [Variant("FP32"),
            Variant(f"FP32 + {qat_steps} training steps (reference)", float_training=True),
            Variant("FP16", {"weights_bits": "fp16", "activation_bits": "fp16"}),
            Variant("INT8 light (W8, A16 dynamic)", LIGHT),
            Variant("INT8 entropy only", LIGHT, entropy_only=True),
            Variant("W8A8 static", {"weights_bits": 8, "activation_bits": 8}),
            Variant("W8A8 static, not equalized", {"weights_bits": 8, "activation_bits": 8, "equalize": False}),
            Variant(f"W8A8 QDrop ({iters} steps/unit)", learned_w8),
            Variant("W4A8 nearest", {"weights_bits": 4, "activation_bits": 8}),
            Variant(f"W4A8 QDrop ({iters} steps/unit)", learned_w4),
            Variant(f"W8A8 nearest + fine-tuning ({qat_steps} steps)", {"weights_bits": 8, "activation_bits": 8},
                    finetune=True),
            Variant(f"W4A8 nearest + fine-tuning ({qat_steps} steps)", {"weights_bits": 4, "activation_bits": 8},
                    finetune=True),
            Variant(f"W4A8 QDrop + fine-tuning ({qat_steps} steps)", learned_w4, finetune=True),
            Variant(f"W8A8 nearest + fine-tuning ({qat_steps} steps), rate held",
                    {"weights_bits": 8, "activation_bits": 8}, finetune=True, hold_rate=True),
            Variant(f"W4A8 nearest + fine-tuning ({qat_steps} steps), rate held",
                    {"weights_bits": 4, "activation_bits": 8}, finetune=True, hold_rate=True),
            Variant(f"W8A8 QDrop + fine-tuning ({qat_steps} steps), rate held", learned_w8, finetune=True,
                    hold_rate=True),
            Variant(f"W4A8 QDrop + fine-tuning ({qat_steps} steps), rate held", learned_w4, finetune=True,
                    hold_rate=True),
            Variant("onnxruntime dynamic int8 (peer)", peer=True)]


@functools.cache
def training_images() -> list[torch.Tensor]:
    """The training photos as uint8 tensors, read once, and only when a variant trains (nothing modifies them)."""
    return [to_uint8(read_image(p)) for p in training_photos()]


def build(variant: Variant, float_model: torch.nn.Module, calib: torch.Tensor, folder: Path,
          training: CodecFinetuneOptions, quantized: dict[str, tuple[torch.nn.Module, float]]
          ) -> tuple[torch.nn.Module, int | None, float]:
    """The variant's model, its file size and the seconds it took to make. ``training``: the fine-tuning run of
    the variants that fine-tune (its lambda, steps and seed also train the float reference); ``quantized``: the
    rate point's quantized models and the seconds each took, by settings, made once for the rows that fine-tune
    them (their seconds count them in)."""
    start = time.perf_counter()
    if variant.float_training:  # the same photos (held-out ones excluded), crops, batch, steps and schedule
        model = copy.deepcopy(float_model)
        train_codec(model, split_photos(training_images(), training.val_photos, training.seed)[0],
                    CodecTrainOptions(lmbda=training.lmbda, steps=training.steps, crop=training.crop,
                                      batch_size=training.batch_size, lr=training.lr, final_lr=0.0,
                                      clip_norm=training.clip_norm, seed=training.seed), quiet=True)
        return model, None, time.perf_counter() - start
    if variant.peer:
        model = ort_dynamic_int8(float_model, folder)
        return model, int8_files_bytes(folder), time.perf_counter() - start
    if variant.settings is None:
        return float_model, None, 0.0
    key = repr((sorted(variant.settings.items()), variant.entropy_only))
    if key not in quantized:
        overrides = scope_overrides(float_model, "entropy") if variant.entropy_only else ()
        settings = dict(variant.settings)
        config = QuantConfig.from_bits(settings.pop("weights_bits"), settings.pop("activation_bits"),
                                       overrides=overrides, seed=SEED, **settings)
        quantized[key] = (lowbit.quantize(float_model, calib, config), time.perf_counter() - start)
    model, seconds = quantized[key]
    if variant.finetune:
        start = time.perf_counter()
        model = finetune_codec(model, training_images(), replace(training, hold_rate=variant.hold_rate))
        seconds += time.perf_counter() - start
    path = lowbit.save(model, folder / "model.lowbit")
    return model, path.stat().st_size, seconds


def bd_shown(reference: list[tuple[float, float]], points: list[tuple[float, float]]) -> float | str:
    """BD-rate of ``points`` against ``reference`` (both (bpp, PSNR) per rate point), or why there is none."""
    try:
        rate = bd_rate([b for b, _ in reference], [p for _, p in reference], [b for b, _ in points],
                       [p for _, p in points])
    except LowbitError:  # a rate point with more bits and less PSNR than another
        return "undefined: PSNR falls from one rate point to a higher one"
    return "no PSNR overlap" if math.isnan(rate) else rate


def has_hyperprior(model: torch.nn.Module) -> bool:
    return hasattr(model, "h_a")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks/codec.md alone")
    # 400: on the hyperprior's two held-out training photos, W4A8 QDrop's BD-rate fell from 13.9% at 150 steps to
    # 10.6%, and 2.3% once fine-tuned holding the rate (nearest then the same fine-tuning: 4.2%)
    parser.add_argument("--iters", type=int, default=400, help="learned rounding steps per unit (batches of 8 crops of 128 pixels, or as many pixels)")
    parser.add_argument("--qat-steps", type=int, default=300, help="fine-tuning steps (batches of 8 crops)")
    parser.add_argument("--codecs", nargs="+", choices=list(BUNDLED), default=list(BUNDLED))
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = [(p.name, read_image(p)) for p in held_out_photos()]
    for codec_name in args.codecs:
        run_codec(codec_name, BUNDLED[codec_name][1], images, args)


def run_codec(codec_name: str, qualities: int, images, args) -> None:
    """Every variant of one codec at every rate point; publishes the codec's section."""
    stride = open_codec(codec_name, 1).stride
    crop = calibration_crop(stride)
    calib = calibration_set(stride)
    rows, bd_rows = [], []
    curves: dict[str, list[tuple[float, float]]] = {}
    for quality in range(1, qualities + 1):
        codec = open_codec(codec_name, quality)
        training = CodecFinetuneOptions(lmbda=codec.recipe["options"]["lmbda"], steps=args.qat_steps, seed=SEED)
        reference, quantized = None, {}
        for variant in variants(args.iters, args.qat_steps, crop):
            if variant.entropy_only and not has_hyperprior(codec.model):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                model, size, seconds = build(variant, codec.model, calib, Path(tmp), training, quantized)
                size = codec.weights_path.stat().st_size if size is None else size
                s = evaluate_codec(model, images, codec.stride).summary()
            reference = reference or s
            curves.setdefault(variant.name, []).append((s["bpp"], s["psnr"]))
            rows.append([f"{codec_name} q{quality}", variant.name,
                         *figures(s["bpp"], s["psnr"], s["ms_ssim"], s["encode_seconds"], s["decode_seconds"]),
                         f"{100 * (s['bpp'] / reference['bpp'] - 1):+.2f}",
                         f"{s['psnr'] - reference['psnr']:+.3f}", human_bytes(size), f"{seconds:.1f}"])
            print(rows[-1], flush=True)
    fp32 = curves["FP32"]
    trained = next((points for name, points in curves.items() if name.startswith("FP32 + ")), None)
    for name, points in curves.items():
        if name != "FP32":
            fine_tuned = trained is not None and "fine-tuning" in name
            bd_rows.append([codec_name, name, bd_shown(fp32, points), bd_shown(trained, points) if fine_tuned else "-"])
    plot = PAGES / f"{codec_name}_rd.png"
    if not args.no_write:
        plot_rd_curves(curves, plot, f"{codec_name}: quantized variants, 4 held-out photos")
    body = "\n\n".join([
        md_table(["codec", "variant", "bpp", "PSNR dB", "MS-SSIM", "encode ms", "decode ms", "bpp vs FP32 %",
                  "PSNR vs FP32 dB", "file", "quantize / train s"], rows),
        "BD-rate against FP32 of the same codec (Bjøntegaard, PSNR, PCHIP through three rate points; positive = "
        "more bits for the same PSNR), and for the fine-tuned rows also against the float codec trained for as many "
        "steps (what quantization costs once the extra training is counted on both sides):",
        md_table(["codec", "variant", "BD-rate % vs FP32", "BD-rate % vs FP32 trained as long"], bd_rows),
        f"![{codec_name} rate-distortion]({plot.name})",
        f"Calibration: {CALIB_CROPS} random {crop}x{crop} crops (seed {SEED}) of the codecs' scikit-image training "
        f"photos (QDrop: {learned_batch(crop)} crops per step); evaluation: the four held-out photos, real "
        "bitstreams, one thread. Files: the bundled float weights "
        "(float16 transforms, float32 entropy model) for FP32; the `.lowbit` file for lowbit's variants; the "
        "quantized ONNX transforms for the peer (its entropy model is the float codec's, not counted). The peer "
        "quantizes Conv and GDN's Conv to int8 with per-call activation ranges; onnxruntime's dynamic "
        "quantization has no ConvTranspose, so the peer's synthesis upsampling stays float, while lowbit "
        "quantizes every layer but the entropy bottleneck's density model. Quantize seconds include "
        "calibration and, for QDrop, the learned rounding. lowbit's static-activation variants equalize channel "
        "ranges through GDN first (the codec default); the row marked not equalized switches that off. The "
        "fine-tuning rows train the round-to-nearest model end to end on the codec's own loss (lambda * 255^2 * MSE "
        "+ bpp, its recipe's lambda), weights through their quantizers and step sizes learned, on crops of the "
        "training photos less two held out to pick the checkpoint kept; the reference row trains the float codec "
        "for the same steps on the same crops with the same schedule, so the rows below FP32 show what "
        "quantization costs and the reference row what the extra training alone gains. The rows marked rate held "
        "fine-tune the same starting model with lambda adjusted after every step so that the bits spent follow the "
        "starting model's on each batch (`lowbit codec finetune --hold-rate`).",
    ])
    publish(f"codec-quant-{codec_name}", f"Quantized codecs: {codec_name}, rate-distortion of every variant", body,
            topic_page("codec"), write=not args.no_write)


if __name__ == "__main__":
    main()
