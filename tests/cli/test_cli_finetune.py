"""``lowbit finetune`` on the bundled ResNet-20 at W2A4, trained on a hundred or so Fashion-MNIST images."""

import json
import shutil

import pytest

import lowbit
from conftest import fashion_mnist_subset
from lowbit.cli import finetune as finetune_cli
from lowbit.cli import main
from lowbit.io.lowbit_file import read_metadata
from lowbit.models import bundled_checkpoint
from lowbit.qat.loop import Trainer

TINY_SPLITS = {"train": 1024, "t10k": 512}  # Fashion-MNIST's file prefixes and the images kept of each
# 64 held-out images and 15% of the other 960 training images (3 steps of 64): a quick epoch
SMALL = ["--val-images", "64", "--data-percentage", "0.15", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def tiny_fashion_mnist(tmp_path_factory):
    """Fashion-MNIST cut to its first 1024 training and 512 test images, for every run of the module."""
    with fashion_mnist_subset(tmp_path_factory.mktemp("fashion-mnist"), TINY_SPLITS) as root:
        yield root


@pytest.fixture(scope="module")
def w2a4(tmp_path_factory, tiny_fashion_mnist):
    """A deliberately weak start (weight-MSE ranges, no gain correction), so that one tiny epoch has room."""
    path = tmp_path_factory.mktemp("finetune") / "r20_w2a4.lowbit"
    assert main(["quantize", "--weights-bits", "2", "--activation-bits", "4", "--calib-images", "128", "--no-eval",
                 "--weights-observer", "mse", "--no-gain-correction", "--out", str(path), "--quiet"]) == 0
    return path


def test_finetune_trains_reports_and_saves_an_exact_file(w2a4, tmp_path, capsys, monkeypatch):
    events = []
    load_data, finetune = finetune_cli.load_data, finetune_cli.finetune
    monkeypatch.setattr(finetune_cli, "load_data", lambda args, split: events.append(split) or load_data(args, split))
    monkeypatch.setattr(finetune_cli, "finetune", lambda *a, **k: events.append("finetune") or finetune(*a, **k))
    out, report = tmp_path / "qat.lowbit", tmp_path / "qat.json"
    code = main(["finetune", str(w2a4), "--epochs", "1", "--lr", "1e-3", "--act-range-momentum", "0.99", *SMALL,
                 "--out", str(out), "--json", str(report)])
    text = capsys.readouterr().out
    assert code == 0 and "held-out top1 %" in text and "fine-tuned, epoch" in text
    assert events == ["train", "finetune", "test"]  # the test split is read only after the epoch is chosen
    result = json.loads(report.read_text())
    run = result["finetune"]
    assert [r["epoch"] for r in run["history"]] == [0, 1] and run["held_out_images"] == 64
    assert result["quant_metrics"]["top1"] > result["start_metrics"]["top1"]
    assert (tmp_path / "qat.ckpt.lowbit").is_file() and (tmp_path / "qat.ckpt.state.safetensors").is_file()

    header = read_metadata(out)
    assert header["provenance"]["finetune"]["options"]["act_range_momentum"] == 0.99
    assert header["quant_metrics"]["top1"] == result["quant_metrics"]["top1"]
    assert main(["eval", str(out), "--quiet", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["top1"] == result["quant_metrics"]["top1"]


def test_resume_after_an_interrupt_continues_the_epoch_count(w2a4, tmp_path, capsys, monkeypatch):
    out, checkpoint = tmp_path / "r.lowbit", tmp_path / "r.ckpt.lowbit"
    real_step = Trainer.train_step

    def interrupted_step(self, x, y):
        if self.state.epoch == 1:
            raise KeyboardInterrupt
        return real_step(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    assert main(["finetune", str(w2a4), "--epochs", "2", *SMALL, "--no-eval", "--out", str(out)]) == 130
    assert str(checkpoint) in capsys.readouterr().err and not out.exists()
    assert read_metadata(checkpoint)["provenance"]["finetune"]["progress"]["epoch"] == 1
    monkeypatch.setattr(Trainer, "train_step", real_step)
    (tmp_path / "r.ckpt.state.safetensors").unlink()  # the .lowbit checkpoint alone is enough to go on

    assert main(["finetune", str(w2a4), "--epochs", "2", *SMALL, "--no-eval", "--out", str(out),
                 "--resume", str(checkpoint)]) == 0
    run = read_metadata(out)["provenance"]["finetune"]
    assert [r["epoch"] for r in run["history"]] == [0, 1, 2] and run["resumed_from"] == str(checkpoint)
    assert lowbit.load(str(out))  # a complete, loadable file


def test_distilling_uses_the_float_weights_the_file_came_from(w2a4, tmp_path, capsys):
    out = tmp_path / "f.lowbit"
    assert main(["finetune", str(w2a4), "--epochs", "1", "--distill", "--no-checkpoint", *SMALL, "--no-eval",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "distilling from the float weights it was quantized from (resnet20_fmnist.safetensors)" in printed
    run = read_metadata(out)["provenance"]["finetune"]
    assert run["objective"] == "distill_kl" and run["held_out_metric"] == "top1"
    assert run["teacher"].startswith("the float weights it was quantized from")


def test_label_free_finetune_falls_back_on_the_unquantized_model(tmp_path, caplog):
    """Float weights moved away since quantization: the input model with its quantizers off teaches, and the
    narrow codes that makes it a poor teacher are called out."""
    weights = tmp_path / "r20.safetensors"
    shutil.copy(bundled_checkpoint("resnet20"), weights)
    quantized, out = tmp_path / "q.lowbit", tmp_path / "d.lowbit"
    assert main(["quantize", "--checkpoint", str(weights), "--weights-bits", "2", "--activation-bits", "4",
                 "--calib-images", "128", "--no-eval", "--weights-observer", "mse", "--no-gain-correction",
                 "--out", str(quantized), "--quiet"]) == 0
    weights.unlink()
    with caplog.at_level("WARNING", logger="lowbit.qat.finetune"):
        assert main(["finetune", str(quantized), "--epochs", "1", "--distill", "--no-checkpoint", *SMALL,
                     "--no-eval", "--out", str(out)]) == 0
    assert "poor teacher" in caplog.text
    run = read_metadata(out)["provenance"]["finetune"]
    assert run["objective"] == "distill_kl" and run["teacher"] == "quantizers off"
    assert run["history"][1]["held_out_loss"] < run["history"][0]["held_out_loss"]
    assert not (tmp_path / "d.ckpt.lowbit").exists()


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--lr", "0"], ["--lr", "nan"], ["--data-percentage", "1.5"],
                                 ["--data-percentage", "0"], ["--act-range-momentum", "1"]])
def test_bad_options_exit_2_with_one_line(w2a4, tmp_path, capsys, bad):
    out = tmp_path / "bad.lowbit"
    assert main(["finetune", str(w2a4), *bad, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error:") and err.count("\n") == 1 and not out.exists()


def test_out_naming_the_input_is_refused(w2a4, capsys):
    assert main(["finetune", str(w2a4), "--out", str(w2a4), "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err


def test_info_shows_how_a_model_was_fine_tuned(w2a4, tmp_path, capsys):
    out = tmp_path / "qat.lowbit"
    assert main(["finetune", str(w2a4), "--epochs", "1", "--lr", "1e-3", *SMALL, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("fine-tuned"))
    assert "1 epoch(s) of 1" in line and "cross_entropy" in line and "lr 0.001" in line and "64 held out" in line
    assert main(["info", str(out)]) == 0  # the float weights it came from, passed on from the quantized file
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("float weights"))
    assert "bundled resnet20 (sha256 " in line
