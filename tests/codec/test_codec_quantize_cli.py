"""``lowbit codec quantize`` end to end: quantize, evaluate and code with the .lowbit file, mixed precision, and
bad requests refused in one line with nothing written."""

from __future__ import annotations

import json
import re

import pytest
from codec_helpers import tiny_weights, write_png

import lowbit.deploy.runtime
from lowbit.cli import main
from lowbit.codec.images import read_image
from lowbit.io.lowbit_file import read_metadata


@pytest.fixture
def setup(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        write_png(photos / f"p{i}.png", 40, 56, seed=i)
    return tiny_weights(tmp_path / "tiny.safetensors"), photos


def _quantize(weights, photos, out, *extra):
    return main(["codec", "quantize", "--model", str(weights), "--images", str(photos), "--calib-images", "4",
                 "--crop", "32", "--eval-images", str(photos), "--quiet", "--out", str(out), *extra])


def test_quantize_then_eval_compress_and_decompress_with_the_file(tmp_path, setup, capsys):
    weights, photos = setup
    out = tmp_path / "c.lowbit"
    assert _quantize(weights, photos, out, "--weights-bits", "8", "--activation-bits", "16", "--dynamic-activations",
                     "--json", str(tmp_path / "q.json")) == 0
    result = json.loads((tmp_path / "q.json").read_text())
    assert result["quant_rd"]["mean"]["bpp"] > 0 and len(result["quant_rd"]["images"]) == 2
    assert read_metadata(out)["provenance"]["codec"]["scope"] == "all"
    assert main(["codec", "eval", "--model", str(out), "--images", str(photos), "--no-jpeg",
                 "--json", str(tmp_path / "rd.json")]) == 0
    evaluated = json.loads((tmp_path / "rd.json").read_text())["mean"]
    assert (evaluated["bpp"], evaluated["psnr"]) == (result["quant_rd"]["mean"]["bpp"], result["quant_rd"]["mean"]["psnr"])
    image = photos / "p0.png"
    assert main(["codec", "compress", "--model", str(out), str(image), str(tmp_path / "p.bits")]) == 0
    assert main(["codec", "decompress", "--model", str(out), str(tmp_path / "p.bits"), str(tmp_path / "a.png")]) == 0
    # decoding in another process, thread count and batch: tests/codec/test_codec_exact.py
    assert read_image(tmp_path / "a.png").shape == read_image(image).shape


def test_a_float_override_is_recorded_in_the_saved_config(tmp_path, setup):
    weights, photos = setup
    out = tmp_path / "c.lowbit"
    assert _quantize(weights, photos, out, "--no-eval", "--override", "g_s*=float") == 0
    header = read_metadata(out)
    assert header["config"]["overrides"][0] == {"pattern": "g_s*", "weights": None, "activations": None,
                                                "keep_float": True}
    assert not any(name.startswith("g_s") for name in header["bits"])


def _fails(capsys, code, match):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("lowbit: error:") and "\n" not in err and match in err, err


def test_bad_requests_are_one_line_errors_and_write_nothing(tmp_path, setup, capsys):
    weights, photos = setup
    out = tmp_path / "c.lowbit"
    _fails(capsys, _quantize(weights, photos, out, "--scope", "entropy"), "no entropy-coding network")
    _fails(capsys, _quantize(weights, photos, tmp_path / "c.pt"), "must end in .lowbit")
    _fails(capsys, _quantize(weights, tmp_path / "nowhere", out), "nowhere")
    _fails(capsys, _quantize(weights, photos, out, "--override", "g_s*=float:8"), "override")
    assert not out.exists()
    assert _quantize(weights, photos, out, "--no-eval") == 0
    _fails(capsys, _quantize(out, photos, tmp_path / "again.lowbit"), "already quantized")


def test_mixed_precision_from_the_command_line(tmp_path, setup, capsys):
    weights, photos = setup
    out = tmp_path / "c.lowbit"
    _fails(capsys, _quantize(weights, photos, out, "--lmbda", "0.01"), "--mixed-precision")
    _fails(capsys, _quantize(weights, photos, out, "--mixed-precision", "--weights-cr", "6", "--bits", "4,8",
                             "--sensitivity", "hessian"), "cannot score")
    assert not out.exists()
    assert _quantize(weights, photos, out, "--no-eval", "--weights-bits", "8", "--activation-bits", "none",
                     "--mixed-precision", "--weights-cr", "6", "--bits", "4,8", "--sensitivity-images", "4",
                     "--lmbda", "0.01") == 0
    header = read_metadata(out)
    assert header["mixed"]["sensitivity"] == "rate-distortion" and set(header["bits"].values()) == {4, 8}
    assert header["mixed"]["sensitivity_options"] == {"lmbda": 0.01}
    assert "bit_cfg" in capsys.readouterr().out


def test_classifier_commands_point_a_codec_file_to_the_codec_commands(tmp_path, setup, capsys):
    weights, photos = setup
    out = tmp_path / "c.lowbit"
    assert _quantize(weights, photos, out, "--no-eval") == 0
    capsys.readouterr()
    for command in (["eval", str(out)], ["bench", str(out)], ["finetune", str(out)]):
        _fails(capsys, main(command), "lowbit codec eval --model")
    assert main(["info", str(out)]) == 0


def test_export_writes_the_transforms_that_eval_compress_and_decompress_run(tmp_path, setup, capsys):
    weights, photos = setup
    out = tmp_path / "c.lowbit"
    assert _quantize(weights, photos, out, "--no-eval", "--weights-bits", "8", "--activation-bits", "8") == 0
    assert main(["export", str(out), "--out", str(tmp_path / "c.onnx")]) == 0
    assert sorted(p.name for p in tmp_path.glob("c.*.onnx")) == ["c.g_a.onnx", "c.g_s.onnx"]
    written = capsys.readouterr().out
    # the synthesis transform's transposed convolutions included, in sub-pixel form
    assert re.search(r"c\.g_s\.onnx .*\n  onnxruntime \(CPU\) runs [1-9]\d* integer and", written), written
    onnx_stem = str(tmp_path / "c.onnx")
    assert main(["codec", "eval", "--model", str(out), "--onnx", onnx_stem, "--images", str(photos), "--no-jpeg"]) == 0
    assert "c.g_a.onnx" in capsys.readouterr().out
    image, bits, png = photos / "p0.png", tmp_path / "p0.bits", tmp_path / "p0.png"
    assert main(["codec", "compress", "--model", str(out), "--onnx", onnx_stem, str(image), str(bits)]) == 0
    assert main(["codec", "decompress", "--model", str(out), str(bits), str(png)]) == 0  # lowbit reads it
    assert read_image(png).shape == read_image(image).shape
    capsys.readouterr()
    other = tmp_path / "other.lowbit"
    assert _quantize(weights, photos, other, "--no-eval", "--weights-bits", "4", "--activation-bits", "8") == 0
    capsys.readouterr()
    code = main(["codec", "eval", "--model", str(other), "--onnx", onnx_stem, "--images", str(photos)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not this codec's g_a" in err, err


def test_provider_needs_onnx_transforms_and_an_onnxruntime_that_has_it(tmp_path, setup, capsys, monkeypatch):
    monkeypatch.setattr(lowbit.deploy.runtime.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    weights, photos = setup
    out = tmp_path / "c.lowbit"
    assert _quantize(weights, photos, out, "--no-eval", "--weights-bits", "8", "--activation-bits", "8") == 0
    assert main(["export", str(out), "--out", str(tmp_path / "c.onnx")]) == 0
    capsys.readouterr()
    for extra, message in (([], "add --onnx STEM"), (["--onnx", str(tmp_path / "c.onnx")], "onnxruntime-gpu")):
        code = main(["codec", "eval", "--model", str(out), "--images", str(photos), "--provider", "cuda", *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_an_autoregressive_codec_codes_with_exact_entropy_parameters_from_the_command_line(tmp_path, setup, capsys):
    _, photos = setup
    weights = tiny_weights(tmp_path / "ar.safetensors", arch="mbt2018-small")
    out, bits, png = tmp_path / "ar.lowbit", tmp_path / "p.bits", tmp_path / "p.png"
    _fails(capsys, _quantize(weights, photos, out), "--crop 32 is not a multiple of the codec's stride 64")
    assert not out.exists()
    assert _quantize(weights, photos, out, "--weights-bits", "8", "--activation-bits", "8", "--crop", "64") == 0
    assert "entropy parameters in exact integers (h_s, entropy_parameters, context_prediction)" in \
        capsys.readouterr().out
    assert main(["codec", "compress", "--model", str(out), str(photos / "p0.png"), str(bits)]) == 0
    assert main(["codec", "decompress", "--model", str(out), str(bits), str(png)]) == 0
    assert read_image(png).shape == read_image(photos / "p0.png").shape
    assert _quantize(weights, photos, tmp_path / "fp16.lowbit", "--weights-bits", "fp16", "--activation-bits",
                     "fp16", "--crop", "64") == 0
    assert "of h_s, entropy_parameters, context_prediction, the coding loop's context model computed in float" \
        in capsys.readouterr().out


def test_calibration_crops_default_to_four_positions_of_the_deepest_latent_per_side(tmp_path, setup):
    _, photos = setup
    sides = {}
    for arch in ("bmshj2018-factorized-small", "bmshj2018-hyperprior-small"):  # strides 16 and 64
        weights, record = tiny_weights(tmp_path / f"{arch}.safetensors", arch=arch), tmp_path / f"{arch}.json"
        assert main(["codec", "quantize", "--model", str(weights), "--images", str(photos), "--calib-images", "2",
                     "--no-eval", "--quiet", "--out", str(tmp_path / f"{arch}.lowbit"), "--json", str(record)]) == 0
        sides[arch] = json.loads(record.read_text())["calibration"]["crop"]
    assert sides == {"bmshj2018-factorized-small": 128, "bmshj2018-hyperprior-small": 256}
