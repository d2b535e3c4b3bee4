"""Reading photos: modes, sizes, padding, and one-line errors for every unusable input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from codec_helpers import png_header_only, write_png
from PIL import Image

from lowbit.codec.images import (
    crop,
    image_files,
    pad_to_stride,
    read_image,
    read_images,
)
from lowbit.errors import LowbitError


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_every_mode_reads_as_rgb(tmp_path, mode):
    path = write_png(tmp_path / f"{mode}.png", 21, 34, mode)
    x = read_image(path)
    assert x.shape == (3, 21, 34) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    expected = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(x.mul(255).round().to(torch.uint8), expected)


def test_folder_lists_images_sorted_and_skips_other_files(tmp_path):
    write_png(tmp_path / "b.png", 8, 8)
    write_png(tmp_path / "a.png", 9, 7)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in image_files(tmp_path)] == ["a.png", "b.png"]
    assert [(name, tuple(x.shape)) for name, x in read_images(tmp_path)] == [("a.png", (3, 9, 7)),
                                                                             ("b.png", (3, 8, 8))]


def test_pad_to_stride_then_crop_restores_the_image():
    x = torch.rand(1, 3, 17, 30)
    padded = pad_to_stride(x, 16)
    assert padded.shape[-2:] == (32, 32)
    assert torch.equal(padded[..., 31, :30], x[..., 16, :])  # replicated edge, not zeros
    assert torch.equal(crop(padded, 17, 30), x)
    assert pad_to_stride(torch.rand(1, 3, 32, 16), 16).shape[-2:] == (32, 16)


def _error(path, **kwargs) -> str:
    with pytest.raises(LowbitError) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in _error(tmp_path / "empty.png")


def test_text_file_named_png(tmp_path):
    (tmp_path / "text.png").write_text("hello, not a picture\n")
    assert "not an image" in _error(tmp_path / "text.png")


def test_truncated_png(tmp_path):
    data = write_png(tmp_path / "full.png", 64, 64).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    assert "truncated" in _error(tmp_path / "cut.png")


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(LowbitError, match="does not exist"):
        image_files(tmp_path / "nope.png")
    (tmp_path / "photos").mkdir()
    with pytest.raises(LowbitError, match="no images"):
        image_files(tmp_path / "photos")


@pytest.mark.parametrize("width,height", [(9000, 6000), (100_000, 100_000)])
def test_huge_header_refused_before_decoding(tmp_path, width, height):
    # 54 Mpx passes Pillow's own bomb check and must meet lowbit's bound; 10 Gpx trips Pillow's first
    path = png_header_only(tmp_path / "huge.png", width, height)
    assert "large" in _error(path) or "over the limit" in _error(path)


def test_pixel_bound_is_configurable(tmp_path):
    path = write_png(tmp_path / "small.png", 10, 10)
    assert "over the limit" in _error(path, max_pixels=99)
    assert read_image(path, max_pixels=100).shape == (3, 10, 10)
