"""Rate-distortion evaluation of a codec on photos, from real bitstreams.

The rate is what a file would cost: the bytes of the strings ``compress`` returns, times 8, over the pixels
of the original (unpadded) image. The distortion is measured on the reconstruction as it would be saved
(uint8, clamped and rounded). Any ``nn.Module`` with CompressAI's interface can be evaluated, so a quantized
codec gets exactly the same treatment as the float one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from lowbit.codec.coding import decode, encode, prepare
from lowbit.codec.images import save_png, to_uint8
from lowbit.codec.metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr
from lowbit.errors import LowbitError


@dataclass(frozen=True)
class ImageResult:
    """One image coded and decoded."""

    name: str
    height: int
    width: int
    num_bytes: int
    bpp: float
    psnr: float
    ms_ssim: float | None  # None for images too small for its five scales
    encode_seconds: float
    decode_seconds: float
    note: str | None = None


@dataclass(frozen=True)
class RDResult:
    """Per-image results and their means (MS-SSIM over the images that have one)."""

    images: tuple[ImageResult, ...]

    def mean(self, field: str) -> float | None:
        values = [getattr(r, field) for r in self.images if getattr(r, field) is not None]
        return sum(values) / len(values) if values else None

    def summary(self) -> dict[str, Any]:
        return {f: self.mean(f) for f in ("bpp", "psnr", "ms_ssim", "encode_seconds", "decode_seconds")}

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.summary(), "images": [asdict(r) for r in self.images]}


def evaluate_codec(model: nn.Module, images: Sequence[tuple[str, torch.Tensor]], stride: int,
                   save_recon: str | Path | None = None, every: int = 1, quiet: bool = True) -> RDResult:
    """Compress and decompress each ``(name, (3, H, W) in [0, 1])`` image; optionally save reconstructions.

    ``stride`` is the multiple the codec needs its input sides padded to. With ``save_recon``, every
    ``every``-th image's reconstruction is written there as ``<stem>.png``, atomically.
    """
    if every < 1:
        raise LowbitError(f"every must be at least 1, got {every}")
    if not images:
        raise LowbitError("no images to evaluate on; give a folder of photos")
    prepare(model)
    results = []
    for index, (name, image) in enumerate(tqdm(images, disable=quiet, desc="coding")):
        start = time.perf_counter()
        encoded = encode(model, image, stride)
        middle = time.perf_counter()
        decoded = decode(model, encoded)
        end = time.perf_counter()
        original, recon = to_uint8(image), to_uint8(decoded)
        score = ms_ssim(original, recon)
        note = None if score is not None else f"MS-SSIM needs both sides of at least {MS_SSIM_MIN_SIDE} px"
        pixels = encoded.height * encoded.width
        results.append(ImageResult(name, encoded.height, encoded.width, encoded.num_bytes,
                                   encoded.num_bytes * 8 / pixels, psnr(original, recon), score,
                                   middle - start, end - middle, note))
        if save_recon is not None and index % every == 0:
            save_png(decoded, Path(save_recon) / f"{Path(name).stem}.png")
    return RDResult(tuple(results))
