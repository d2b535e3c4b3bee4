"""Bad input: one line on stderr, exit status 2, no traceback, no output file."""

import pytest
from safetensors.torch import save_file

from lowbit.cli import main
from lowbit.models import build_model


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_clean_error(code, err, pattern, tmp_path):
    assert code == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert pattern in err, err
    assert not list(tmp_path.glob("*.lowbit")) and not list(tmp_path.glob("*.part"))


@pytest.fixture
def out(tmp_path):
    return str(tmp_path / "q.lowbit")


def test_missing_checkpoint(capsys, tmp_path, out):
    code, err = run(capsys, "quantize", "--checkpoint", str(tmp_path / "nope.safetensors"), "--out", out)
    assert_clean_error(code, err, "not found", tmp_path)


def test_corrupt_checkpoint(capsys, tmp_path, out):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    code, err = run(capsys, "quantize", "--checkpoint", str(bad), "--out", out)
    assert_clean_error(code, err, "bad.safetensors", tmp_path)


def test_checkpoint_of_another_architecture(capsys, tmp_path, out):
    ckpt = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("mobilenet_v2_small", num_classes=10, in_channels=1)
               .state_dict().items()}, str(ckpt))
    code, err = run(capsys, "quantize", "--model", "resnet20", "--checkpoint", str(ckpt), "--out", out)
    assert_clean_error(code, err, "--model", tmp_path)


@pytest.mark.parametrize("bits", ["1", "17", "four"])
def test_bits_out_of_range(capsys, tmp_path, out, bits):
    code, err = run(capsys, "quantize", "--weights-bits", bits, "--out", out)
    assert_clean_error(code, err, "2 to 16", tmp_path)


def test_unknown_model(capsys, tmp_path, out):
    code, err = run(capsys, "quantize", "--model", "resnet1000", "--out", out)
    assert_clean_error(code, err, "resnet1000", tmp_path)


def test_unknown_model_is_named_before_the_data_is_looked_for(capsys, tmp_path, out, monkeypatch):
    monkeypatch.setattr("lowbit.data.fashion_mnist.SYSTEM_DIR", tmp_path / "no-data")
    monkeypatch.delenv("LOWBIT_DATA", raising=False)
    code, err = run(capsys, "quantize", "--model", "resnet1000", "--out", out)
    assert_clean_error(code, err, "resnet1000", tmp_path)


def test_unknown_dataset(capsys, tmp_path, out):
    code, err = run(capsys, "quantize", "--dataset", "mnist-ish", "--out", out)
    assert_clean_error(code, err, "mnist-ish", tmp_path)


def test_empty_data_folder(capsys, tmp_path, out):
    empty = tmp_path / "empty"
    empty.mkdir()
    ckpt = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("resnet18", num_classes=10).state_dict().items()}, str(ckpt))
    code, err = run(capsys, "quantize", "--model", "resnet18", "--checkpoint", str(ckpt), "--dataset", "imagefolder",
                    "--train-data-path", str(empty), "--val-data-path", str(empty), "--out", out)
    assert_clean_error(code, err, str(empty), tmp_path)


def test_truncated_lowbit_file(capsys, tmp_path):
    f = tmp_path / "t.lowbit"
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    code, err = run(capsys, "eval", str(f))
    assert code == 2 and "Traceback" not in err and "truncated" in err


def test_lowbit_file_info_of_missing_file(capsys, tmp_path):
    code, err = run(capsys, "info", str(tmp_path / "none.lowbit"))
    assert code == 2 and "not found" in err


@pytest.mark.parametrize("argv,pattern", [
    (["--weights-bits", "²"], "--weights-bits must be an integer"),
    (["--weights-cr", "0"], "without --mixed-precision"),
    (["--mixed-precision", "--weights-cr", "0"], "weights_cr must be a positive number"),
    (["--mixed-precision", "--weights-cr", "nan"], "weights_cr must be a positive number"),
    (["--override", "layer9.*=8"], "matches no layer or activation"),
    (["--method", "brecq", "--method-option", "lr=-1"], "lr must be a finite number"),
    (["--calib-data", "noise", "--n-images", "0"], "--n-images must be at least 1"),
    (["--dataset", "imagefolder", "--image-size", "0"], "--image-size must be at least 1"),
])
def test_quantize_options_that_cannot_work(capsys, tmp_path, out, argv, pattern):
    code, err = run(capsys, "quantize", *argv, "--calib-images", "8", "--no-eval", "--out", out, "--quiet")
    assert_clean_error(code, err, pattern, tmp_path)


def test_synth_with_no_images_is_refused(capsys, tmp_path):
    code, err = run(capsys, "synth", "--n-images", "0", "--out", str(tmp_path / "s"))
    assert_clean_error(code, err, "--n-images must be at least 1", tmp_path)


def test_text_file_given_as_checkpoint(capsys, tmp_path, out):
    text = tmp_path / "notes.pt"
    text.write_text("hello world\n")
    code, err = run(capsys, "quantize", "--checkpoint", str(text), "--out", out)
    assert_clean_error(code, err, "not a checkpoint", tmp_path)


@pytest.mark.parametrize("command", ["info", "export"])
def test_onnx_file_given_where_a_lowbit_file_is_read(capsys, tmp_path, command):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"\x08\x09\x12\x04test" * 8)
    argv = [command, str(f)] + (["--out", str(tmp_path / "x.onnx")] if command == "export" else [])
    code, err = run(capsys, *argv)
    assert_clean_error(code, err, "is an ONNX model, not a .lowbit file", tmp_path)
    assert not (tmp_path / "x.onnx").exists()


def test_missing_cifar10_says_where_it_looked(capsys, tmp_path, out, monkeypatch):
    monkeypatch.delenv("LOWBIT_DATA", raising=False)
    code, err = run(capsys, "quantize", "--dataset", "cifar10", "--out", out)
    assert_clean_error(code, err, "no --data-dir given and LOWBIT_DATA unset", tmp_path)
