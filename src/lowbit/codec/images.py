"""Photos in and out of a codec: reading files or folders into RGB tensors, padding to a codec's stride.

Codecs see photographs of any size and mode, so reading normalises both: grayscale, palette and RGBA inputs
become RGB (alpha is dropped: the codecs code three channels), and sizes are padded up to the codec's stride
and cropped back after decoding. Every way a file can be unusable ends in one :class:`LowbitError` line that
names the file and the fix, and the pixel count is checked from the header before any pixel is decoded, so a
hostile or mistaken file cannot exhaust memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lowbit.data.image_file import MAX_PIXELS, open_rgb
from lowbit.errors import LowbitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")

def image_files(path: str | Path) -> list[Path]:
    """The image files at ``path``: the file itself, or a folder's images (not recursive) sorted by name."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise LowbitError(f"folder {path} has no images ({', '.join(IMAGE_SUFFIXES)}); point to a folder of "
                              "photos or to one image file")
        return files
    if not path.exists():
        raise LowbitError(f"{path} does not exist; give an image file or a folder of images")
    return [path]


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """The image at ``path`` as a float tensor ``(3, H, W)`` in [0, 1]."""
    return to_tensor(open_rgb(path, max_pixels))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB Pillow image as a float tensor ``(3, H, W)`` in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """A decoded ``(3, H, W)`` tensor in [0, 1] as the uint8 pixels a saved file holds (clamped and rounded)."""
    return x.detach().clamp(0, 1).mul(255).round().to(torch.uint8)


def save_png(x: torch.Tensor, path: str | Path) -> None:
    """Write a ``(3, H, W)`` tensor in [0, 1] as a PNG, atomically (whole or not at all)."""
    from lowbit.io.atomic import atomic_path

    pixels = to_uint8(x).permute(1, 2, 0).cpu().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(pixels, "RGB").save(tmp, format="PNG")


def pad_to_stride(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``(N, C, H, W)`` padded on the bottom and right, by edge replication, to multiples of ``stride``.

    Replicated edges cost almost no bits, unlike a zero border whose step the codec would have to code.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % stride, (-width) % stride
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The top-left ``height x width`` of ``(..., H, W)``: undoes :func:`pad_to_stride`."""
    return x[..., :height, :width]


def read_images(path: str | Path, max_pixels: int = MAX_PIXELS) -> list[tuple[str, torch.Tensor]]:
    """``(file name, (3, H, W) tensor)`` for the image file or each image in the folder at ``path``."""
    return [(f.name, read_image(f, max_pixels)) for f in image_files(path)]
