"""The image pipeline of data-free generation: what the network sees of the images being optimized.

Images are kept a little larger than the model input (``extra_pixels`` on each side). Every step sees a random
crop of them, randomly flipped and lightly smoothed, clipped to the range real inputs can take; the final
images are smoothed, centre-cropped and clipped the same way. Random crops and flips stop the optimization
from encoding the statistics in a few fixed pixel positions; smoothing removes the high-frequency noise that
matches statistics without looking like any real input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def gaussian_kernel(size: int, sigma: float, channels: int) -> torch.Tensor:
    """A depthwise ``size x size`` Gaussian kernel, shape (channels, 1, size, size), summing to 1."""
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    k = torch.outer(g, g)
    return (k / k.sum()).expand(channels, 1, size, size).contiguous()


@dataclass
class ImagePipeline:
    """Crops, flips, smoothing and clipping for images in the model's normalized input space.

    ``low``/``high`` are per-channel bounds: ``(0 - mean) / std`` and ``(1 - mean) / std`` for inputs that are
    pixel values in [0, 1] normalized by ``mean`` and ``std``.
    """

    output_size: tuple[int, int]
    extra_pixels: int
    low: torch.Tensor
    high: torch.Tensor
    flip: bool = True
    smoothing_size: int = 3
    smoothing_sigma: float = 1.25

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.output_size[0] + 2 * self.extra_pixels, self.output_size[1] + 2 * self.extra_pixels)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x, self._bound(self.high, x)), self._bound(self.low, x))

    def _bound(self, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return b.to(x.device, x.dtype).view(1, -1, 1, 1)

    def smooth(self, x: torch.Tensor) -> torch.Tensor:
        if self.smoothing_size <= 1:
            return x
        k = gaussian_kernel(self.smoothing_size, self.smoothing_sigma, x.shape[1]).to(x.device, x.dtype)
        pad = self.smoothing_size // 2
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), k, groups=x.shape[1])

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The view used for one optimization step: flip each image with probability 1/2, smooth, random crop."""
        if self.flip:
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
        x = self.smooth(x)
        h, w = self.output_size
        top = int(torch.randint(0, x.shape[-2] - h + 1, (1,), generator=gen))
        left = int(torch.randint(0, x.shape[-1] - w + 1, (1,), generator=gen))
        return self.clip(x[..., top : top + h, left : left + w])

    def finalize(self, x: torch.Tensor) -> torch.Tensor:
        """The images handed out: smoothed, centre crop, clipped."""
        x = self.smooth(x)
        e = self.extra_pixels
        h, w = self.output_size
        return self.clip(x[..., e : e + h, e : e + w])
