"""A quantized codec's transforms in onnxruntime: same bitstreams as lowbit's codec, any image size, integer
convolutions, and files that only run with the codec they came from."""

from __future__ import annotations

import pytest
import torch
from codec_helpers import photo_like

import lowbit
from lowbit.codec import open_codec
from lowbit.codec.coding import decode, encode, prepare
from lowbit.codec.onnx_transforms import export_transforms, transform_paths, with_onnx_transforms
from lowbit.codec.rate_distortion import evaluate_codec
from lowbit.deploy.runtime import optimized_op_counts
from lowbit.errors import LowbitError

STRIDE = 64  # the hyperprior's: g_a downsamples 16 times, h_a 4 more


def _image(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(photo_like(height, width, seed=seed)).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    crops = torch.stack([_image(64, 64, seed) for seed in range(8)])
    # the bundled codec: an untrained one's latents all round to zero, which would hide a wrong transform
    qcodec = lowbit.quantize(open_codec("codec-hyperprior-small", 1).model, crops, weights_bits=8, activation_bits=8)
    stem = tmp_path_factory.mktemp("onnx") / "codec.onnx"
    reports = export_transforms(qcodec, stem, "digest")
    return qcodec, stem, reports


def test_each_transform_is_one_file_with_integer_convolutions(exported):
    qcodec, stem, reports = exported
    assert sorted(reports) == ["g_a", "g_s", "h_a"]  # h_s stays in lowbit's exact integer path
    assert {r.path for r in reports.values()} == set(transform_paths(stem, qcodec).values())
    assert optimized_op_counts(reports["g_a"].path)["QLinearConv"] >= 3
    assert optimized_op_counts(reports["g_s"].path)["QLinearConv"] >= 3  # transposed convolutions in sub-pixel form


def test_onnx_transforms_code_what_lowbit_codes_at_any_size(exported):
    qcodec, stem, _ = exported
    images = [("a", _image(70, 90, 1)), ("b", _image(128, 64, 2))]  # padded to the stride, then cropped
    runtime = with_onnx_transforms(qcodec, stem, "digest", threads=1)
    ours = evaluate_codec(qcodec, images, STRIDE).images
    theirs = evaluate_codec(runtime, images, STRIDE).images
    for a, b in zip(ours, theirs):
        assert abs(a.num_bytes - b.num_bytes) <= 0.02 * a.num_bytes + 2
        assert abs(a.psnr - b.psnr) < 0.05


def test_bitstreams_cross_between_onnxruntime_and_lowbit(exported):
    qcodec, stem, _ = exported
    runtime = prepare(with_onnx_transforms(qcodec, stem, "digest", threads=1))
    image = _image(96, 80, 3)
    encoded = encode(runtime, image, STRIDE)
    by_lowbit, by_onnx = decode(prepare(qcodec), encoded), decode(runtime, encoded)
    reference = decode(prepare(qcodec), encode(prepare(qcodec), image, STRIDE))
    assert (by_lowbit - by_onnx).abs().max() < 0.05  # the same latents, decoded by either synthesis transform
    assert (by_lowbit - image).pow(2).mean() < 2 * (reference - image).pow(2).mean()


def test_files_run_only_with_their_codec(exported, tmp_path):
    qcodec, stem, _ = exported
    with pytest.raises(LowbitError, match="not this codec's g_a"):
        with_onnx_transforms(qcodec, stem, "another digest")
    with pytest.raises(LowbitError, match="write the codec's ONNX transforms with `lowbit export`"):
        with_onnx_transforms(qcodec, tmp_path / "missing.onnx", "digest")
    for name, path in transform_paths(tmp_path / "broken.onnx", qcodec).items():
        path.write_bytes(b"\x08" * 40 if name == "g_a" else path.read_bytes() if path.exists() else b"")
    with pytest.raises(LowbitError, match="broken.g_a.onnx is not"):  # not ONNX, or no tags: refused either way
        with_onnx_transforms(qcodec, tmp_path / "broken.onnx", "digest")


def test_the_whole_codec_points_to_its_transforms(exported, tmp_path):
    qcodec, _, _ = exported
    with pytest.raises(LowbitError, match="exports its transforms"):
        lowbit.export(qcodec, tmp_path / "codec.onnx", torch.rand(1, 3, 64, 64))
