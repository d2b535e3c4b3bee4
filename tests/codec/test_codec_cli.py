"""``lowbit codec``: compress/decompress/eval/train end to end, and exit 2 with nothing written on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from codec_helpers import png_header_only, tiny_weights, write_png

from lowbit.cli import main
from lowbit.codec.images import read_image


@pytest.fixture
def weights(tmp_path):
    return tiny_weights(tmp_path / "tiny.safetensors")


def _fails(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("lowbit: error:") and "\n" not in err and match in err, err


def test_compress_decompress_round_trip(tmp_path, weights, capsys):
    image = write_png(tmp_path / "img.png", 30, 45)
    assert main(["codec", "compress", "--model", str(weights), str(image), str(tmp_path / "img.bits")]) == 0
    assert main(["codec", "decompress", "--model", str(weights), str(tmp_path / "img.bits"),
                 str(tmp_path / "rec.png")]) == 0
    assert read_image(tmp_path / "rec.png").shape == (3, 30, 45)
    assert main(["codec", "eval", "--model", str(weights), "--images", str(image), "--save-recon",
                 str(tmp_path / "out"), "--json", str(tmp_path / "rd.json")]) == 0
    assert torch.equal(read_image(tmp_path / "out" / "img.png"), read_image(tmp_path / "rec.png"))
    rd = json.loads((tmp_path / "rd.json").read_text())
    assert rd["images"][0]["num_bytes"] * 8 / (30 * 45) == pytest.approx(rd["mean"]["bpp"])
    assert rd["jpeg_at_equal_bpp"][0]["bpp"] == pytest.approx(rd["mean"]["bpp"], rel=0.01) or \
        rd["jpeg_at_equal_bpp"][0]["quality"] in (1, 95)
    assert "img.png" in capsys.readouterr().out


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"just some text\n", "not an image"),
                                           (None, "truncated"), ("huge", "large")])
def test_bad_images_exit_2_and_write_nothing(tmp_path, weights, capsys, content, match):
    bad = tmp_path / "bad.png"
    if content is None:
        bad.write_bytes(write_png(tmp_path / "good.png", 64, 64).read_bytes()[:200])
    elif content == "huge":
        png_header_only(bad, 100_000, 100_000)
    else:
        bad.write_bytes(content)
    _fails(capsys, ["codec", "compress", "--model", str(weights), str(bad), str(tmp_path / "o.bits")], match)
    _fails(capsys, ["codec", "eval", "--model", str(weights), "--images", str(bad), "--json",
                    str(tmp_path / "rd.json"), "--save-recon", str(tmp_path / "rec")], match)
    assert not (tmp_path / "o.bits").exists() and not (tmp_path / "rd.json").exists()
    assert not (tmp_path / "rec").exists()


def test_empty_folder(tmp_path, weights, capsys):
    (tmp_path / "photos").mkdir()
    _fails(capsys, ["codec", "eval", "--model", str(weights), "--images", str(tmp_path / "photos"), "--json",
                    str(tmp_path / "rd.json")], "no images")
    assert not (tmp_path / "rd.json").exists()


def test_bad_bitstreams_exit_2_and_write_nothing(tmp_path, weights, capsys):
    image = write_png(tmp_path / "img.png", 20, 20)
    assert main(["codec", "compress", "--model", str(weights), str(image), str(tmp_path / "img.bits")]) == 0
    data = (tmp_path / "img.bits").read_bytes()
    other = tiny_weights(tmp_path / "other.safetensors", seed=1)
    out = tmp_path / "rec.png"
    (tmp_path / "cut.bits").write_bytes(data[:-3])
    (tmp_path / "magic.bits").write_bytes(b"PK\x03\x04" + data[4:])
    _fails(capsys, ["codec", "decompress", "--model", str(weights), str(tmp_path / "cut.bits"), str(out)], "truncated")
    _fails(capsys, ["codec", "decompress", "--model", str(weights), str(tmp_path / "magic.bits"), str(out)], "magic")
    _fails(capsys, ["codec", "decompress", "--model", str(other), str(tmp_path / "img.bits"), str(out)],
           "written by codec tiny.safetensors")
    _fails(capsys, ["codec", "decompress", str(tmp_path / "img.bits"), str(out)], "not bundled")
    assert not out.exists()


def test_output_clashing_with_input_is_refused(tmp_path, weights, capsys):
    image = write_png(tmp_path / "img.png", 20, 20)
    before = image.read_bytes()
    _fails(capsys, ["codec", "compress", "--model", str(weights), str(image), str(image)], "is the input")
    assert image.read_bytes() == before


def test_train_writes_weights_and_recipe(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_png(photos / "a.png", 40, 40)
    out = tmp_path / "c.safetensors"
    assert main(["codec", "train", "--images", str(photos), "--n", "8", "--m", "8", "--steps", "2", "--crop", "32",
                 "--batch-size", "2", "--lmbda", "0.01", "--out", str(out), "--quiet"]) == 0
    recipe = json.loads(out.with_suffix(".json").read_text())
    assert recipe["architecture"] == "bmshj2018-factorized-small" and (recipe["N"], recipe["M"]) == (8, 8)
    assert recipe["options"]["lmbda"] == 0.01 and recipe["options"]["steps"] == 2
    assert recipe["training_photos"] == ["a.png"] and recipe["command"].startswith("lowbit codec train")
    # the trained file works as a --model and as an --init of the same architecture
    assert main(["codec", "compress", "--model", str(out), str(photos / "a.png"), str(tmp_path / "a.bits")]) == 0
    _fails(capsys, ["codec", "train", "--arch", "bmshj2018-hyperprior", "--images", str(photos), "--init", str(out),
                    "--out", str(tmp_path / "d.safetensors")], "pass the matching --arch")
    _fails(capsys, ["codec", "train", "--arch", "mbt2018-small", "--images", str(photos), "--crop", "32",
                    "--out", str(tmp_path / "d.safetensors")], "--crop 32 is not a multiple of the codec's stride 64")
    assert not (tmp_path / "d.safetensors").exists()


def test_codec_commands_print_no_warning_from_compressai_imports(tmp_path, weights):
    """CompressAI's package import pulls in torch-geometric, whose ``torch.jit.script`` deprecation warning is
    not the user's concern: loading a quantized codec prints only the command's own output."""
    image = write_png(tmp_path / "img.png", 32, 32)
    path = tmp_path / "tiny.lowbit"
    assert main(["codec", "quantize", "--model", str(weights), "--images", str(image), "--calib-images", "2",
                 "--crop", "32", "--weights-bits", "8", "--activation-bits", "16", "--dynamic-activations",
                 "--quiet", "--out", str(path)]) == 0
    commands = [["codec", "eval", "--model", str(path), "--images", str(image), "--no-jpeg"],
                ["codec", "finetune", str(path), "--images", str(tmp_path), "--steps", "0",
                 "--out", str(tmp_path / "out.lowbit")]]
    # both commands in one fresh process (a second interpreter would import the same modules again), as
    # ``python -m lowbit`` runs them: its __main__ only calls main
    script = f"import sys; from lowbit.cli import main; print([main(a) for a in {commands!r}])"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[0, 2]" and "Warning" not in done.stderr, done.stderr
