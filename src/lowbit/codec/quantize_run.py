"""One whole codec quantization run, as ``lowbit codec quantize`` performs it: calibrate on crops of training
photos, quantize (all of the codec, or only its entropy-coding networks), measure float and quantized
rate-distortion on the same held-out photos from real bitstreams, and save the quantized codec with its record.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lowbit.api import quantize
from lowbit.codec.images import read_image, to_uint8
from lowbit.codec.rate_distortion import evaluate_codec
from lowbit.codec.task import Scope, exact_entropy_parameters, scope_overrides
from lowbit.codec.train import random_crops
from lowbit.codec.zoo import OpenCodec
from lowbit.config import QuantConfig
from lowbit.coverage import coverage
from lowbit.errors import LowbitError
from lowbit.io.lowbit_file import save
from lowbit.run import float_file_size


MIN_CALIBRATION_CROP = 128
DEEPEST_LATENT_SIDE = 4  # positions per side of a codec's deepest latent in one calibration crop


def calibration_crop(stride: int) -> int:
    """The default side of a codec's calibration crops: 128 pixels, or more where the deepest latent would have
    fewer than 4x4 positions. A hyperprior's side latents (stride 64) would see 2x2 positions per 128-pixel
    crop, every one at the padded border: their ranges, and so the static grids of the entropy-parameter
    networks that read them, then miss much of what whole photos produce."""
    return max(MIN_CALIBRATION_CROP, DEEPEST_LATENT_SIDE * stride)


def calibration_crops(paths: list[Path], count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` random ``size x size`` crops of the photos at ``paths``, in [0, 1] (a codec's calibration set)."""
    if not paths:
        raise LowbitError("no calibration photos; pass --images with a folder of photos")
    if size < 16:
        raise LowbitError(f"--crop must be at least 16 pixels, got {size}")
    images = [to_uint8(read_image(p)) for p in paths]
    return random_crops(images, size, count, random.Random(seed))


def quantize_codec_run(codec: OpenCodec, calib: torch.Tensor, config: QuantConfig, out: str | Path, *,
                       scope: Scope = "all", eval_images: list[tuple[str, torch.Tensor]] | None = None,
                       calib_record: dict[str, Any] | None = None, progress: bool = False,
                       mixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Quantize ``codec`` on ``calib`` within ``scope``, evaluate float and quantized on ``eval_images`` (when
    given), save to ``out``, and return every figure (the JSON ``lowbit codec quantize --json`` writes).

    ``mixed``: the keywords of :func:`lowbit.quantize` for mixed precision (``mixed``, ``sensitivity``...)."""
    config = replace(config, overrides=config.overrides + scope_overrides(codec.model, scope))
    start = time.perf_counter()
    qmodel = quantize(codec.model, calib, config, progress=progress, **(mixed or {}))
    seconds = time.perf_counter() - start
    share = coverage(qmodel)
    result: dict[str, Any] = {
        "model": codec.name, "quality": codec.quality, "architecture": codec.architecture, "scope": scope,
        "config": config.to_dict(), "out": str(out), "quantize_seconds": seconds,
        "float_file_bytes": float_file_size(codec.model), "coverage": share.to_dict(),
        "coverage_note": share.describe(), "entropy_parameters": exact_entropy_parameters(qmodel),
        **(calib_record or {})}
    extra: dict[str, Any] = {"codec": {"model": codec.name, "quality": codec.quality, "float_sha256": codec.digest,
                                       "scope": scope}, **(calib_record or {})}
    if eval_images:
        result["float_rd"] = evaluate_codec(codec.model, eval_images, codec.stride).to_dict()
        result["quant_rd"] = evaluate_codec(qmodel, eval_images, codec.stride).to_dict()
        extra["rate_distortion"] = {"images": [name for name, _ in eval_images],
                                    "float": result["float_rd"]["mean"], "quantized": result["quant_rd"]["mean"]}
    save(qmodel, out, extra)
    result["quant_file_bytes"] = Path(out).stat().st_size
    if "mixed" in qmodel.lowbit_info.extra:
        result["mixed"] = qmodel.lowbit_info.extra["mixed"]
    return result
