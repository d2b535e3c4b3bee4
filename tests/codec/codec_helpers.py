"""Tiny codecs and images for the codec tests (a helper module, not a test module)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lowbit.codec.architectures import codec_architecture
from lowbit.codec.zoo import save_codec

ARCH = "bmshj2018-factorized-small"


def tiny_codec(seed: int = 0, channels: int = 8, arch: str = ARCH) -> torch.nn.Module:
    """An untrained codec (by default a factorized one) with few channels: real entropy coding, milliseconds per
    image."""
    torch.manual_seed(seed)
    return codec_architecture(arch).create(channels, channels).eval()


def tiny_weights(path: Path, seed: int = 0, arch: str = ARCH) -> Path:
    """A tiny codec saved as a weights file with its recipe, as ``lowbit codec train`` writes it."""
    save_codec(tiny_codec(seed, arch=arch), path, {"architecture": arch, "N": 8, "M": 8})
    return path


def photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random colours plus a little noise, uint8 ``(H, W, 3)``: compressible like a photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(max(2, height // 8), max(2, width // 8), 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), dtype=np.float64)
    return np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8)


def write_png(path: Path, height: int, width: int, mode: str = "RGB", seed: int = 0) -> Path:
    image = Image.fromarray(photo_like(height, width, seed))
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width x height`` but which has no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def photos(count: int, side: int, first_seed: int = 0) -> torch.Tensor:
    """``count`` photo-like images ``(count, 3, side, side)`` in [0, 1]."""
    return torch.stack([torch.from_numpy(photo_like(side, side, seed=first_seed + i)).permute(2, 0, 1)
                        for i in range(count)]) / 255


class Perturbed:
    """Relative noise of ``eps`` on every float32 convolution output inside ``network``, as another summation
    order or device would produce; seeded, so the perturbation is the same on every run."""

    def __init__(self, network: torch.nn.Module, eps: float) -> None:
        self.network, self.eps = network, eps

    def __enter__(self):
        generator = torch.Generator().manual_seed(0)

        def jitter(_module, _inputs, out):
            return out * (1 + self.eps * torch.randn(out.shape, generator=generator))

        convs = [m for m in self.network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        # before any hook already there: an exact path replacing the output ignores the float one it perturbs
        self.handles = [m.register_forward_hook(jitter, prepend=True) for m in convs]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
