"""``lowbit codec finetune`` end to end: the codec's own lambda found in its recipe, the fine-tuned file evaluated
and described, and bad requests refused in one line with nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from codec_helpers import ARCH, tiny_codec, tiny_weights, write_png

from lowbit.cli import main
from lowbit.cli.codec_finetune import trained_lambda
from lowbit.codec.zoo import bundled_weights, read_recipe, save_codec


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        write_png(folder / f"p{i}.png", 40, 56, seed=i)
    return folder


def _weights_with_lambda(path, lmbda):
    codec = tiny_codec()
    with torch.no_grad():
        codec.g_a[-1].weight.mul_(30)  # latents spanning several integers, as a trained codec's
    save_codec(codec, path, {"architecture": ARCH, "N": 8, "M": 8, "options": {"lmbda": lmbda}})
    return path


def _quantize(weights, photos, out):
    assert main(["codec", "quantize", "--model", str(weights), "--images", str(photos), "--calib-images", "4",
                 "--crop", "32", "--no-eval", "--quiet", "--weights-bits", "4", "--activation-bits", "8",
                 "--out", str(out)]) == 0
    return out


def _finetune(file, photos, out, *extra):
    return main(["codec", "finetune", str(file), "--images", str(photos), "--steps", "6", "--eval-every", "3",
                 "--batch-size", "2", "--crop", "32", "--eval-images", str(photos), "--quiet", "--out", str(out),
                 *extra])


def test_finetune_uses_the_codecs_own_lambda_and_writes_a_file_that_evaluates_the_same(tmp_path, photos, capsys):
    quantized = _quantize(_weights_with_lambda(tmp_path / "c.safetensors", 0.02), photos, tmp_path / "q.lowbit")
    out = tmp_path / "ft.lowbit"
    assert _finetune(quantized, photos, out, "--json", str(tmp_path / "ft.json")) == 0
    result = json.loads((tmp_path / "ft.json").read_text())
    assert result["finetune"]["options"]["lmbda"] == 0.02
    assert [h["step"] for h in result["finetune"]["history"]] == [0, 3, 6]
    assert main(["codec", "eval", "--model", str(out), "--images", str(photos), "--no-jpeg",
                 "--json", str(tmp_path / "rd.json")]) == 0
    evaluated = json.loads((tmp_path / "rd.json").read_text())["mean"]
    assert (evaluated["bpp"], evaluated["psnr"]) == (result["quant_rd"]["mean"]["bpp"], result["quant_rd"]["mean"]["psnr"])
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "6 steps on the rate-distortion loss (lambda 0.02, lr" in capsys.readouterr().out


def test_hold_rate_reaches_the_run_and_the_file(tmp_path, photos, capsys):
    quantized = _quantize(_weights_with_lambda(tmp_path / "c.safetensors", 0.02), photos, tmp_path / "q.lowbit")
    out = tmp_path / "ft.lowbit"
    assert _finetune(quantized, photos, out, "--hold-rate", "--json", str(tmp_path / "ft.json")) == 0
    run = json.loads((tmp_path / "ft.json").read_text())["finetune"]
    assert run["options"]["hold_rate"] is True
    assert run["history"][-1]["lmbda"] != 0.02  # lambda moved to follow the rate
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "(lambda 0.02, the starting rate held, lr" in capsys.readouterr().out


def test_a_bundled_codecs_lambda_comes_from_its_recipe():
    expected = read_recipe(bundled_weights("codec-factorized-small", 2))["options"]["lmbda"]
    assert trained_lambda({"codec": {"model": "codec-factorized-small", "quality": 2}}) == expected
    assert trained_lambda({"codec": {"model": "codec-factorized-small", "quality": "2"}}) is None
    assert trained_lambda({"codec": "codec-factorized-small"}) is None


def _fails(capsys, code, match):
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1


def test_an_unknown_lambda_is_refused_and_nothing_is_written(tmp_path, photos, capsys):
    quantized = _quantize(tiny_weights(tmp_path / "c.safetensors"), photos, tmp_path / "q.lowbit")
    out = tmp_path / "ft.lowbit"
    _fails(capsys, _finetune(quantized, photos, out), "pass --lmbda")
    assert not out.exists()
    _fails(capsys, _finetune(quantized, photos, tmp_path / "ft.bin", "--lmbda", "0.01"), "must end in .lowbit")
    _fails(capsys, _finetune(quantized, photos, out, "--lmbda", "0.01", "--steps", "0"), "steps must be at least 1")
    _fails(capsys, _finetune(quantized, photos, quantized, "--lmbda", "0.01"), "--out")
    _fails(capsys, _finetune(quantized, photos, out, "--lmbda", "0.01", "--crop", "24"),
           "--crop 24 is not a multiple of the codec's stride 16")
    assert not out.exists()
