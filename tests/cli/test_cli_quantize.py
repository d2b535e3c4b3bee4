"""The CLI's happy paths on the bundled ResNet-20 (small calibration sets keep them quick)."""

import json

import pytest
import torch

import lowbit
from conftest import fashion_mnist_subset
from lowbit.cli import main
from lowbit.graph import activation_quantizers

SHORT_SPLITS = {"train": 4096, "t10k": 2000}  # Fashion-MNIST's file prefixes and the images kept of each


@pytest.fixture(scope="module", autouse=True)
def short_fashion_mnist(tmp_path_factory):
    """Fashion-MNIST cut to its first 4096 training and 2000 test images, for every run of the module.

    Each run that evaluates goes through the whole test split, which takes most of its time; the figures asserted
    hold on these 2000 images as on all 10,000. Also used by the other CLI test modules.
    """
    with fashion_mnist_subset(tmp_path_factory.mktemp("fashion-mnist"), SHORT_SPLITS) as root:
        yield root


def test_quantize_eval_info_round_trip(tmp_path, capsys):
    out, report = tmp_path / "r.lowbit", tmp_path / "r.json"
    code = main(["quantize", "--weights-bits", "4", "--activation-bits", "8", "--calib-images", "128",
                 "--out", str(out), "--json", str(report), "--per-layer", "--quiet"])
    text = capsys.readouterr().out
    assert code == 0 and "W4A8 nearest" in text and "output SQNR dB" in text
    result = json.loads(report.read_text())
    assert result["float_metrics"]["top1"] > 0.93
    assert result["quant_metrics"]["top1"] > result["float_metrics"]["top1"] - 0.03
    assert result["quant_file_bytes"] < 0.14 * result["float_file_bytes"]
    assert len(result["per_layer"]) == 22

    assert main(["eval", str(out), "--quiet", "--json", str(tmp_path / "e.json")]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["metrics"]["top1"] == result["quant_metrics"]["top1"]  # reload is exact

    assert main(["info", str(out)]) == 0
    assert "22 x 4" in capsys.readouterr().out


def test_python_load_without_model_uses_the_zoo(tmp_path):
    out = tmp_path / "w8.lowbit"
    assert main(["quantize", "--calib-images", "64", "--no-eval", "--out", str(out), "--quiet"]) == 0
    q = lowbit.load(out)
    assert q(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_overrides_and_weights_only(tmp_path, capsys):
    out = tmp_path / "o.lowbit"
    assert main(["quantize", "--weights-bits", "2", "--activation-bits", "none", "--override", "layer3.*=8",
                 "--first-last-bits", "8", "--calib-images", "64", "--no-eval", "--out", str(out), "--quiet"]) == 0
    bits = lowbit.io.lowbit_file.read_metadata(out)["bits"]
    assert bits["conv1"] == 8 and bits["fc"] == 8 and bits["layer3.0.conv1"] == 8 and bits["layer1.0.conv1"] == 2


def test_residual_bits_flag_reaches_the_saved_model(tmp_path):
    out = tmp_path / "r.lowbit"
    assert main(["quantize", "--weights-bits", "4", "--activation-bits", "4", "--residual-bits", "8",
                 "--calib-images", "64", "--no-eval", "--out", str(out), "--quiet"]) == 0
    bits = {n: m.spec.bits for n, m in activation_quantizers(lowbit.load(out))}
    assert bits["act_quant.layer1_0_conv2"] == 8 and bits["act_quant.layer1_0_relu1"] == 4


def test_float_residual_stream_flag_reaches_the_saved_model(tmp_path, capsys):
    out = tmp_path / "v.lowbit"
    assert main(["quantize", "--model", "vit_small", "--weights-bits", "4", "--activation-bits", "4",
                 "--float-residual-stream", "--calib-images", "32", "--no-eval", "--out", str(out), "--quiet"]) == 0
    names = {n for n, _ in activation_quantizers(lowbit.load(out))}
    assert "act_quant.blocks_0_norm1" in names and not any(n.startswith("act_quant.add") for n in names)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "residual stream float" in capsys.readouterr().out


def test_output_corrections_can_be_switched_off(tmp_path):
    out = tmp_path / "c.lowbit"
    assert main(["quantize", "--weights-bits", "4", "--activation-bits", "none", "--no-bias-correction",
                 "--no-gain-correction", "--calib-images", "64", "--no-eval", "--out", str(out), "--quiet"]) == 0
    config = lowbit.io.lowbit_file.read_metadata(out)["config"]
    assert config["weights"]["observer"] == "output"
    assert not config["bias_correction"] and not config["gain_correction"]
