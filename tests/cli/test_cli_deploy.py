"""``lowbit export``, ``lowbit eval FILE.onnx`` and ``lowbit bench`` on the bundled ResNet-20."""

import contextlib
import io
import json
import re

import onnx
import pytest
from onnx import helper

import lowbit
import lowbit.cli.demo
import lowbit.cli.quantize
import lowbit.deploy.bench
import lowbit.deploy.runtime
from lowbit.cli import main
from lowbit.deploy import export

from test_cli_quantize import short_fashion_mnist  # noqa: F401 (autouse: the runs here read the short copy)


@pytest.fixture(scope="module")
def r20(tmp_path_factory):
    path = tmp_path_factory.mktemp("r20") / "r20.lowbit"
    assert main(["quantize", "--model", "resnet20", "--calib-images", "256", "--no-eval", "--quiet",
                 "--out", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def r20_export(r20, tmp_path_factory):
    """``lowbit export`` of that model, run as on an x86 CPU without VNNI (the file is the same on every CPU;
    only a printed note differs): the ONNX file and what the command printed."""
    path = tmp_path_factory.mktemp("onnx") / "r20.onnx"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(lowbit.deploy.runtime, "x86_without_vnni", lambda: True)
        assert main(["export", str(r20), "--out", str(path), "--check-images", "500"]) == 0
    return path, printed.getvalue()


def test_export_eval_and_bench(r20, r20_export, capsys, tmp_path, monkeypatch):
    onnx_path, out = r20_export
    assert "QLinearConv x21" in out and "0 float convolutions" in out, out
    agreement = float(re.search(r"same top-1 class for ([\d.]+)%", out).group(1))
    assert agreement >= 99.5, out  # exact integer products on every CPU: only float rounding differs
    assert main(["eval", str(onnx_path), "--quiet", "--json", str(tmp_path / "onnx.json")]) == 0
    assert main(["eval", str(r20), "--quiet", "--json", str(tmp_path / "lowbit.json")]) == 0
    onnx_top1 = json.loads((tmp_path / "onnx.json").read_text())["metrics"]["top1"]
    lowbit_top1 = json.loads((tmp_path / "lowbit.json").read_text())["metrics"]["top1"]
    assert abs(onnx_top1 - lowbit_top1) <= 0.002
    capsys.readouterr()
    exports = []
    monkeypatch.setattr(lowbit.deploy.bench, "export", lambda *args, **kwargs: exports.append(args))
    assert main(["bench", str(r20), "--onnx", str(onnx_path), "--batch-size", "1", "4", "--repeats", "1",
                 "--warmup", "0", "--threads", "1", "--json", str(tmp_path / "bench.json")]) == 0
    assert not exports  # the exported file is timed, not a new export
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["onnx"] == str(onnx_path)
    timings = record["timings"]
    assert sorted({t["form"] for t in timings}) == sorted(lowbit.deploy.bench.FORMS)
    assert sorted({t["batch_size"] for t in timings}) == [1, 4]


def test_bench_refuses_an_onnx_file_for_other_inputs(r20, capsys, tmp_path):
    graph = helper.make_graph([helper.make_node("Flatten", ["input"], ["output"])], "rgb",
                              [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["n", 192])])
    rgb = tmp_path / "rgb.onnx"
    onnx.save(helper.make_model(graph), str(rgb))
    code, err = run(capsys, "bench", str(r20), "--onnx", str(rgb))
    assert code == 2 and len(err.splitlines()) == 1 and "takes inputs of shape" in err, err


def test_export_warns_of_saturation_on_cpus_without_vnni(r20, r20_export, capsys, tmp_path, monkeypatch):
    assert "session.x64quantprecision=1" in r20_export[1]
    monkeypatch.setattr(lowbit.deploy.runtime, "x86_without_vnni", lambda: True)
    assert main(["export", str(r20), "--out", str(tmp_path / "u.onnx"), "--check-images", "0",
                 "--unsigned-weights"]) == 0
    assert "VNNI" not in capsys.readouterr().out


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def test_export_refuses_to_overwrite_its_input(r20, capsys):
    code, err = run(capsys, "export", str(r20), "--out", str(r20))
    assert code == 2 and len(err.splitlines()) == 1 and "is the input file" in err


def test_eval_of_a_file_that_is_not_onnx(capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model" * 10)
    code, err = run(capsys, "eval", str(bad))
    assert code == 2 and len(err.splitlines()) == 1 and "not an ONNX model" in err


def test_eval_of_a_model_for_other_images(capsys, tmp_path, residual_net, images):
    qmodel = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=8)
    path = export(qmodel, tmp_path / "rgb.onnx", images[:2]).path
    code, err = run(capsys, "eval", str(path), "--dataset", "fashion-mnist")
    assert code == 2 and len(err.splitlines()) == 1 and "takes inputs of shape" in err


def test_gpu_provider_missing_is_one_line(r20, r20_export, capsys, monkeypatch):
    monkeypatch.setattr(lowbit.deploy.runtime.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    onnx_path = r20_export[0]
    for argv in (["eval", str(onnx_path), "--provider", "cuda"], ["bench", str(r20), "--provider", "tensorrt"]):
        code, err = run(capsys, *argv)
        assert code == 2 and len(err.splitlines()) == 1 and "onnxruntime-gpu" in err, err
    code, err = run(capsys, "eval", str(r20), "--provider", "cuda")
    assert code == 2 and len(err.splitlines()) == 1 and "runs .onnx files" in err, err


def test_demo_deploys_its_w8a8_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(lowbit.cli.demo, "TIMING", ("--batch-size", "1", "2", "--repeats", "1", "--warmup", "0"))
    assert main(["demo", "--quiet", "--no-eval", "--out", str(tmp_path / "d.lowbit")]) == 0
    out = capsys.readouterr().out
    onnx_file = tmp_path / "d.w8a8.onnx"
    assert onnx_file.is_file() and f"$ lowbit export {tmp_path / 'd.w8a8.lowbit'}" in out, out
    assert "QLinearConv x21" in out, out
    agreement = float(re.search(r"same top-1 class for ([\d.]+)%", out).group(1))
    assert agreement >= 99.5, out  # exact integer products on every CPU: only float rounding differs
    assert sum(line.startswith("onnxruntime int8") for line in out.splitlines()) == 2, out  # both batch sizes


def test_demo_without_deployment_stops_after_quantizing(capsys, tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(lowbit.cli.quantize, "quantize_and_report", lambda args, config: made.append(args.out) or {})
    monkeypatch.setattr(lowbit.cli.demo, "print_report", lambda result, label: None)
    assert main(["demo", "--no-deploy", "--out", str(tmp_path / "d.lowbit")]) == 0
    assert made == [str(tmp_path / "d.w8a8.lowbit"), str(tmp_path / "d.w4a8.lowbit")]
    assert "$ lowbit" not in capsys.readouterr().out and not list(tmp_path.glob("*.onnx"))
