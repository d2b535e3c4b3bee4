"""``--device``: a device this machine cannot use ends with one line naming the fix (exit 2), before any work."""

import pytest
import torch

from lowbit.cli import main
from lowbit.cli.common import resolve_device


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def assert_clean_error(code, err, *fragments):
    assert code == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert all(f in err for f in fragments), err


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as PyTorch would see it without a GPU, whatever the test machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def commands(tmp_path, device):
    return {
        "quantize": ["quantize", "--device", device, "--no-eval", "--out", str(tmp_path / "q.lowbit"), "--quiet"],
        "synth": ["synth", "--model", "resnet20", "--device", device, "--out", str(tmp_path / "synth"), "--quiet"],
        # no data to load: the device is checked before anything else can fail
        "quick": ["quantize", "--dataset", "none", "--device", device, "--out", str(tmp_path / "q.lowbit")],
    }


@pytest.mark.parametrize("command", ["quantize", "synth"])
def test_cuda_without_a_gpu_names_the_fix(capsys, tmp_path, no_gpu, command):
    code, err = run(capsys, *commands(tmp_path, "cuda")[command])
    assert_clean_error(code, err, "--device cuda", "GPU", "use --device cpu")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "meta"])
def test_unknown_device_is_rejected(capsys, tmp_path, device):
    code, err = run(capsys, *commands(tmp_path, device)["quick"])
    assert_clean_error(code, err, f"unknown --device {device!r}", "cuda:N")


def test_gpu_index_beyond_the_visible_ones(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, err = run(capsys, *commands(tmp_path, "cuda:3")["quick"])
    assert_clean_error(code, err, "only 1 GPU", "cuda:0 to cuda:0")


def test_default_device_is_cuda_only_when_a_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == "cpu"
    assert resolve_device("cpu") == "cpu"
