"""Reading one image file safely: every way a file can be unusable ends in one :class:`LowbitError` line that
names the file and the fix, and the pixel count is checked from the header before any pixel is decoded, so a
hostile or mistaken file cannot exhaust memory. Grayscale, palette, 16-bit and RGBA images come out as RGB.
Used by image-folder datasets and by the image codecs alike.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lowbit.errors import LowbitError

#: Refuse images above this many pixels (about 8K x 6K): decoding one costs memory in proportion, and an
#: evaluation at that size is almost surely a mistake or a hostile header.
MAX_PIXELS = 50_000_000


def open_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image at ``path`` fully decoded as an RGB Pillow image, or a one-line error naming the problem."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise LowbitError(f"{path} cannot be read ({exc.strerror}); give an existing image file") from None
    if size == 0:
        raise LowbitError(f"{path} is empty (0 bytes); replace it with a complete image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (UnidentifiedImageError, ValueError):
        raise LowbitError(f"{path} is not an image Pillow can read; give a PNG, JPEG or other image file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise LowbitError(f"{path} declares an absurdly large image (over {max_pixels} pixels); "
                          "downscale it or pass a smaller file") from None
    except OSError as exc:
        raise LowbitError(f"{path} cannot be read ({exc}); give a readable image file") from None
    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise LowbitError(f"{path} declares a {width}x{height} image; give an image with pixels")
        if width * height > max_pixels:
            raise LowbitError(f"{path} is {width}x{height} pixels, over the limit of {max_pixels}; "
                              "downscale it or split it into tiles")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:  # Pillow reports truncation and corrupt data as these
            raise LowbitError(f"{path} is truncated or corrupt ({exc}); replace it with a complete file") from None
        return _rgb(image)


def _rgb(image: Image.Image) -> Image.Image:
    """RGB version of any mode; transparent pixels keep their colour (alpha is not coded)."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: keep the top 8 bits, not a clipped copy
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    return image.convert("RGB")
