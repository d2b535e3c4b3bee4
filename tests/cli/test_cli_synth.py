"""``lowbit synth`` and ``lowbit quantize --calib-data``: data-free calibration from the command line."""

import pytest
import torch
from safetensors.torch import save_file

from lowbit.cli import main
from lowbit.data.synthetic_files import load_synthetic
from lowbit.io.lowbit_file import read_metadata
from lowbit.models import build_model

from test_cli_quantize import SHORT_SPLITS, short_fashion_mnist  # noqa: F401 (autouse: runs read the short copy)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "images"
    assert main(["synth", "--model", "resnet20", "--n-images", "48", "--iters", "4", "--synth-batch-size", "16",
                 "--out", str(out), "--quiet"]) == 0
    return out


def test_synth_writes_tensor_file_and_grid(synth_dir, capsys):
    images, meta = load_synthetic(synth_dir)
    assert images.shape == (48, 1, 28, 28) and torch.isfinite(images).all()
    assert (synth_dir / "grid.png").stat().st_size > 1000
    assert meta["model"] == "resnet20" and meta["options"]["iters"] == 4


def test_quantize_calibrates_on_a_synth_folder(synth_dir, tmp_path):
    out = tmp_path / "q.lowbit"
    assert main(["quantize", "--calib-data", str(synth_dir), "--no-eval", "--out", str(out), "--quiet"]) == 0
    meta = read_metadata(out)
    assert meta["provenance"]["calib_data"] == str(synth_dir) and meta["provenance"]["synth"]["n_images"] == 48


@pytest.mark.parametrize("source", ["synthetic", "noise"])
def test_quantize_without_real_images(source, tmp_path, capsys):
    out = tmp_path / "q.lowbit"
    assert main(["quantize", "--calib-data", source, "--n-images", "32", "--synth-iters", "3",
                 "--synth-batch-size", "16", "--out", str(out), "--quiet"]) == 0
    meta = read_metadata(out)
    assert meta["provenance"]["calib_data"] == source
    assert meta["quant_metrics"]["n"] == SHORT_SPLITS["t10k"]  # still evaluated on the whole test split
    assert "W8A8 nearest" in capsys.readouterr().out


def test_unknown_calibration_source_is_a_clean_error(tmp_path, capsys):
    code = main(["quantize", "--calib-data", str(tmp_path / "missing"), "--out", str(tmp_path / "q.lowbit")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "missing" in err, err
    assert not list(tmp_path.glob("*.lowbit"))


def test_synth_for_a_model_without_batch_norm_says_why(tmp_path, capsys):
    ckpt = tmp_path / "vit.safetensors"
    vit = build_model("vit_small", num_classes=10, in_channels=1, image_size=28)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(ckpt))
    code = main(["synth", "--model", "vit_small", "--checkpoint", str(ckpt), "--n-images", "8",
                 "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "batch-norm" in err, err
    assert not (tmp_path / "s").exists()


def test_pretrained_imagenet_model_needs_no_data_at_all(tmp_path, capsys):
    out = tmp_path / "effnet.lowbit"
    assert main(["quantize", "--model", "efficientnet_lite0", "--pretrained", "--calib-data", "synthetic",
                 "--n-images", "8", "--synth-iters", "2", "--image-size", "64", "--weights-bits", "4",
                 "--out", str(out), "--quiet"]) == 0
    meta = read_metadata(out)
    assert meta["dataset"] is None and meta["provenance"]["calib_data"] == "synthetic" and meta["quant_metrics"] is None
    assert out.stat().st_size < 0.15 * 4 * 4.7e6  # 4.7M float32 parameters, 4-bit codes plus scales
