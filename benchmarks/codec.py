"""Rate-distortion of the bundled learned codecs against Pillow JPEG on the held-out photos.

Every codec row is measured from real bitstreams (``compress``/``decompress``) at each rate point; the JPEG
rows give JPEG's PSNR and MS-SSIM at the codec's bpp on each photo (interpolated between the two bracketing
JPEG qualities, whole JPEG files counted), averaged like the codec rows. BD-rate compares each variant's
three-point curve with JPEG's curve over the PSNR range they share (negative: fewer bits than JPEG).

Quantized variants of the codecs are measured by ``codec_quant.py``.
Run: OMP_NUM_THREADS=1 python3 benchmarks/codec.py [--no-write]
"""

from __future__ import annotations

import argparse
import io
import time

import torch
from PIL import Image
from report import md_table, publish, topic_page

from lowbit.codec import bd_rate, evaluate_codec, open_codec
from lowbit.codec.images import read_image
from lowbit.codec.jpeg import jpeg_at_bpp, jpeg_bytes, jpeg_curve
from lowbit.codec.photos import held_out_photos
from lowbit.codec.zoo import BUNDLED
from lowbit.report import human_bytes

JPEG_QUALITIES = list(range(1, 96, 2))


def mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def figures(bpp: float, psnr: float, ms_ssim: float | None, encode: float, decode: float) -> list[str]:
    """Table cells at the precision each figure deserves (bpp to 3 places, times in milliseconds)."""
    return [f"{bpp:.3f}", f"{psnr:.2f}", "-" if ms_ssim is None else f"{ms_ssim:.4f}", f"{1000 * encode:.0f}",
            f"{1000 * decode:.0f}"]


def jpeg_seconds(image: torch.Tensor, quality: int) -> tuple[float, float]:
    """Pillow's encode and decode time at ``quality``."""
    start = time.perf_counter()
    data = jpeg_bytes(image, quality)
    middle = time.perf_counter()
    Image.open(io.BytesIO(data)).convert("RGB").load()
    return middle - start, time.perf_counter() - middle


def jpeg_anchor(images: list[tuple[str, torch.Tensor]], low: float, high: float) -> tuple[list[float], list[float]]:
    """JPEG's mean (bpp, PSNR) curve, cut to the qualities that bracket the PSNR range [low, high]."""
    curves = [jpeg_curve(x, JPEG_QUALITIES) for _, x in images]
    points = [(mean([c[i].bpp for c in curves]), mean([c[i].psnr for c in curves])) for i in range(len(JPEG_QUALITIES))]
    first = max([i for i, (_, p) in enumerate(points) if p <= low] or [0])
    last = min([i for i, (_, p) in enumerate(points) if p >= high] or [len(points) - 1])
    kept = points[first:last + 1]
    return [b for b, _ in kept], [p for _, p in kept]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks/codec.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = held_out_photos()
    images = [(p.name, read_image(p)) for p in paths]
    rows, gaps, curves = [], [], {}
    for name, (_, qualities) in BUNDLED.items():
        for q in range(1, qualities + 1):
            codec = open_codec(name, q)
            result = evaluate_codec(codec.model, images, codec.stride)
            size = codec.weights_path.stat().st_size if codec.weights_path else None
            s = result.summary()
            rows.append([f"{name} q{q}", "FP32", *figures(s["bpp"], s["psnr"], s["ms_ssim"], s["encode_seconds"],
                                                          s["decode_seconds"]), human_bytes(size)])
            jpeg = [jpeg_at_bpp(x, r.bpp) for (_, x), r in zip(images, result.images)]
            times = [jpeg_seconds(x, round(j.quality)) for (_, x), j in zip(images, jpeg)]
            rows.append([f"JPEG at q{q}'s bpp", "Pillow", *figures(
                mean([j.bpp for j in jpeg]), mean([j.psnr for j in jpeg]), mean([j.ms_ssim for j in jpeg]),
                mean([t[0] for t in times]), mean([t[1] for t in times])), "-"])
            gaps.append([f"{name} q{q}"] + [r.psnr - j.psnr for r, j in zip(result.images, jpeg)])
            curves.setdefault(name, []).append((s["bpp"], s["psnr"]))
    bd_rows = []
    for name, points in curves.items():
        psnrs = [p for _, p in points]
        anchor_rate, anchor_psnr = jpeg_anchor(images, min(psnrs), max(psnrs))
        bd_rows.append([name, bd_rate(anchor_rate, anchor_psnr, [b for b, _ in points], psnrs),
                        f"{min(psnrs):.2f}-{max(psnrs):.2f}"])
    size_note = ", ".join(f"{w}x{h}" for w, h in (Image.open(p).size for p in paths))
    body = "\n\n".join([
        md_table(["codec", "variant", "bpp", "PSNR dB", "MS-SSIM", "encode ms", "decode ms", "weights"], rows),
        "PSNR gain over JPEG at equal bpp, per held-out photo (dB):",
        md_table(["variant", *[n for n, _ in images]], gaps),
        "BD-rate against JPEG (Bjøntegaard, PSNR, PCHIP interpolation; negative = fewer bits for the same PSNR):",
        md_table(["variant", "BD-rate %", "PSNR range dB"], bd_rows),
        f"Held-out photos: {', '.join(n for n, _ in images)} from scikit-image's data folder ({size_note}), never "
        "used in training. Codec bpp counts the entropy-coded strings of real bitstreams (the lowbit container's "
        "header adds about 240 bytes per file); JPEG bpp counts whole files (Pillow, 4:2:0, optimized Huffman). "
        "PSNR and MS-SSIM are measured on 8-bit RGB reconstructions and averaged over photos; times are per "
        "photo on one thread. Weights are float16 transforms with a float32 entropy model, run in float32.",
    ])
    publish("codec-rd", "Learned codec vs JPEG: rate-distortion on held-out photos", body, topic_page("codec"),
            write=not args.no_write)


if __name__ == "__main__":
    main()
