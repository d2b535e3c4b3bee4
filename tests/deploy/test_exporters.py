"""The export-format registry: ``lowbit export --format`` lists and runs whatever is registered."""

from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.cli import build_parser, main
from lowbit.deploy import EXPORTERS, Exporter, ExportReport, export_as
from lowbit.models import build_model


def _write_state(qmodel, path: Path, example, options) -> ExportReport:
    """A toy format: the quantized model's state dict, via torch.save."""
    torch.save(qmodel.state_dict(), path)
    return ExportReport(path, path.stat().st_size, 0, [f"tag={options.get('tag')}"])


@pytest.fixture
def state_format(monkeypatch):
    monkeypatch.setitem(EXPORTERS._entries, "state-dict", Exporter(".pt", "the state dict", _write_state, ("tag",)))


def test_a_registered_format_is_a_cli_choice_and_writes_its_file(state_format, tmp_path, residual_net, images):
    qmodel = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=8)
    report = export_as("state-dict", qmodel, tmp_path / "m.pt", images[:2], tag="x")
    assert report.float_compute == ["tag=x"]
    assert torch.load(report.path, weights_only=True).keys() == qmodel.state_dict().keys()
    export = next(a for a in build_parser()._subparsers._group_actions[0].choices["export"]._actions
                  if a.dest == "format")
    assert "state-dict" in export.choices and "the state dict" in export.help


def test_an_option_the_format_lacks_is_refused(state_format, tmp_path, residual_net, images):
    qmodel = lowbit.quantize(residual_net, images, weights_bits=8, activation_bits=8)
    with pytest.raises(lowbit.LowbitError, match="has no option signed_weights"):
        export_as("state-dict", qmodel, tmp_path / "m.pt", images[:2], signed_weights=True)
    assert not list(tmp_path.iterdir())


def test_unknown_format_from_the_cli_exits_2(capsys, tmp_path):
    assert main_exit(["export", str(tmp_path / "x.lowbit"), "--format", "tflite"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def main_exit(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse rejects bad choices itself, with status 2
        return exc.code


def test_cli_writes_a_registered_format(state_format, tmp_path, capsys):
    net = build_model("resnet20", num_classes=10, in_channels=1).eval()
    qmodel = lowbit.quantize(net, torch.randn(32, 1, 28, 28), weights_bits=8, activation_bits=8)
    source = lowbit.save(qmodel, tmp_path / "m.lowbit")
    assert main(["export", str(source), "--format", "state-dict", "--input-shape", "1,28,28"]) == 0
    assert (tmp_path / "m.pt").exists() and "wrote" in capsys.readouterr().out
    assert main(["export", str(source), "--format", "state-dict", "--unsigned-weights", "--out",
                 str(tmp_path / "n.pt"), "--input-shape", "1,28,28"]) == 2
    assert "has no option signed_weights" in capsys.readouterr().err
