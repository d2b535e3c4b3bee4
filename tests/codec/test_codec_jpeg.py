"""The JPEG baseline: quality orders rate and distortion, and the bpp search brackets its target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from codec_helpers import photo_like

from lowbit.codec.jpeg import jpeg_at_bpp, jpeg_bytes, jpeg_curve, jpeg_point


@pytest.fixture
def image() -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(photo_like(64, 80))).permute(2, 0, 1).float() / 255


def test_rate_and_psnr_grow_with_quality(image):
    points = jpeg_curve(image, [5, 25, 50, 75, 95])
    bpps, psnrs = [p.bpp for p in points], [p.psnr for p in points]
    assert bpps == sorted(bpps) and len(set(bpps)) == len(bpps)
    assert psnrs == sorted(psnrs)
    assert points[0].bpp == pytest.approx(len(jpeg_bytes(image, 5)) * 8 / (64 * 80))


def test_at_bpp_interpolates_between_bracketing_qualities(image):
    low, high = jpeg_point(image, 40), jpeg_point(image, 60)
    target = (low.bpp + high.bpp) / 2
    point = jpeg_at_bpp(image, target)
    assert point.bpp == pytest.approx(target)
    assert 40 <= point.quality <= 60
    below, above = jpeg_point(image, int(point.quality)), jpeg_point(image, int(point.quality) + 1)
    assert below.bpp <= target <= above.bpp
    assert min(below.psnr, above.psnr) <= point.psnr <= max(below.psnr, above.psnr)


def test_at_bpp_outside_jpeg_range_returns_the_end_point(image):
    assert jpeg_at_bpp(image, 1e-4).quality == 1
    assert jpeg_at_bpp(image, 1e3).quality == 95
