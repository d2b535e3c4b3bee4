"""The JPEG baseline: Pillow's encoder (4:2:0 chroma, optimized Huffman tables) at a chosen quality or bpp.

A codec is compared with JPEG at equal rate. JPEG's rate is a step function of its quality setting, so the
JPEG figures at a codec's bpp are interpolated linearly between the two qualities that bracket it; the
rate counts the whole JPEG file, headers included, as a saved file would cost.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image

from lowbit.codec.images import to_tensor, to_uint8
from lowbit.codec.metrics import ms_ssim, psnr

QUALITIES = range(1, 96)  # Pillow discourages above 95: larger files for no visible gain


@dataclass(frozen=True)
class JpegPoint:
    """JPEG at one quality (or interpolated between two, then ``quality`` is fractional)."""

    quality: float
    bpp: float
    psnr: float
    ms_ssim: float | None


def jpeg_bytes(image: torch.Tensor, quality: int) -> bytes:
    """The JPEG file of a ``(3, H, W)`` image in [0, 1] at Pillow ``quality`` (1-95)."""
    pixels = to_uint8(image).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=int(quality), optimize=True)
    return buffer.getvalue()


def jpeg_point(image: torch.Tensor, quality: int) -> JpegPoint:
    """Encode at ``quality``, decode, and measure rate (whole file) and distortion."""
    data = jpeg_bytes(image, quality)
    decoded = to_uint8(to_tensor(Image.open(io.BytesIO(data)).convert("RGB")))
    original = to_uint8(image)
    bpp = len(data) * 8 / (image.shape[-2] * image.shape[-1])
    return JpegPoint(float(quality), bpp, psnr(original, decoded), ms_ssim(original, decoded))


def _bpp(image: torch.Tensor, quality: int) -> float:
    return len(jpeg_bytes(image, quality)) * 8 / (image.shape[-2] * image.shape[-1])


def jpeg_at_bpp(image: torch.Tensor, target_bpp: float) -> JpegPoint:
    """JPEG's figures at ``target_bpp``, interpolated between the qualities that bracket it.

    Outside JPEG's range (below quality 1 or above 95) the nearest end point is returned as is. The bracket
    is found by bisection, as JPEG's size grows with quality (ties aside).
    """
    low, high = QUALITIES[0], QUALITIES[-1]
    if _bpp(image, low) >= target_bpp:
        return jpeg_point(image, low)
    if _bpp(image, high) <= target_bpp:
        return jpeg_point(image, high)
    while high - low > 1:  # invariant: bpp(low) < target <= bpp(high)
        middle = (low + high) // 2
        if _bpp(image, middle) < target_bpp:
            low = middle
        else:
            high = middle
    a, b = jpeg_point(image, low), jpeg_point(image, high)
    t = (target_bpp - a.bpp) / (b.bpp - a.bpp) if b.bpp > a.bpp else 0.0
    score = None if a.ms_ssim is None or b.ms_ssim is None else a.ms_ssim + t * (b.ms_ssim - a.ms_ssim)
    return JpegPoint(low + t, target_bpp, a.psnr + t * (b.psnr - a.psnr), score)


def jpeg_curve(image: torch.Tensor, qualities: range | list[int] = QUALITIES) -> list[JpegPoint]:
    """JPEG points of ``image`` at each quality."""
    return [jpeg_point(image, q) for q in qualities]

