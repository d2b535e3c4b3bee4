"""Distortion metrics of a decoded image, measured as it would be saved: uint8 pixels (clamped, rounded).

MS-SSIM needs five scales with an 11-pixel window, so an image under 161 pixels on a side has no MS-SSIM;
it is reported as ``None`` rather than computed on a padded image, which would credit the codec with the
padding's similarity.
"""

from __future__ import annotations

import math

import torch

#: pytorch_msssim needs each side larger than (win_size - 1) * 2^(scales - 1) = 10 * 16.
MS_SSIM_MIN_SIDE = 161


def psnr(original: torch.Tensor, decoded: torch.Tensor) -> float:
    """PSNR in dB between two uint8 images on the 0-255 scale (infinite when identical)."""
    mse = torch.mean((original.double() - decoded.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def ms_ssim(original: torch.Tensor, decoded: torch.Tensor) -> float | None:
    """MS-SSIM of two uint8 ``(3, H, W)`` images, or None when a side is under :data:`MS_SSIM_MIN_SIDE`."""
    if min(original.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return None
    from pytorch_msssim import ms_ssim as _ms_ssim

    a, b = original[None].float(), decoded[None].float()
    return float(_ms_ssim(a, b, data_range=255.0, size_average=True))
