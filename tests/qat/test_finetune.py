"""Quantization-aware fine-tuning: it improves a low-bit model, with labels or without, keeps the epoch that is
best on held-out training images, resumes exactly, and freezes again so that save/load is bit-exact."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import lowbit
from conftest import ResidualNet, randomize_bn
from lowbit import qmath
from lowbit.data.fashion_mnist import load_fashion_mnist
from lowbit.errors import LowbitError
from lowbit.evaluate import sqnr_db
from lowbit.graph import activation_quantizers
from lowbit.layers import quant_layers
from lowbit.models import build_model, bundled_checkpoint, load_checkpoint
from lowbit.qat import FinetuneOptions
from lowbit.qat.checkpoint import state_path
from lowbit.qat.loop import Trainer
from lowbit.qat.trainable import RangeTracker, grid_range
from lowbit.quantizer import Quantizer
from lowbit.spec import activation_spec

# Fine-tuning settings for the few hundred images these tests train on: a higher rate than the default, which is
# meant for whole training sets, so that one short epoch shows its effect.
SHORT = {"epochs": 1, "lr": 1e-3, "scale_lr": 1e-2, "batch_size": 32}


@pytest.fixture(scope="module")
def fmnist() -> dict:
    """The bundled ResNet-20 at W2A4, 320 images to fine-tune on (64 held out) and 256 others to measure on.

    The start is round-to-nearest on weight-MSE ranges without gain correction, a weaker start than the
    defaults', so that one short epoch on a few hundred images has room to show its effect.

    The images come from Fashion-MNIST's test file, the quickest to read; here they are just images.
    """
    pool = load_fashion_mnist("test")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
    model = build_model("resnet20", num_classes=10, in_channels=1, image_size=28)
    load_checkpoint(model, bundled_checkpoint("resnet20"))
    model.eval()
    x, y = pool.tensors[0][order[320:576]], pool.tensors[1][order[320:576]]
    with torch.no_grad():
        reference = model(x)
    q = lowbit.quantize(model, pool.tensors[0][order[576:704]], weights_bits=2, activation_bits=4,
                        weights_observer="mse", gain_correction=False)
    return {"model": model, "q": q, "train": Subset(pool, order[:320].tolist()), "x": x, "y": y,
            "reference": reference}


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def test_qat_with_labels_improves_a_w2a4_model(fmnist):
    q, x, y = fmnist["q"], fmnist["x"], fmnist["y"]
    before = _logits(q, x)
    tuned = lowbit.finetune(q, fmnist["train"], **SHORT, val_images=64)
    run = tuned.lowbit_info.extra["finetune"]
    assert run["objective"] == "cross_entropy" and run["kept_epoch"] == 1
    assert run["history"][1]["held_out_top1"] > run["history"][0]["held_out_top1"]
    # measured on images neither training nor the choice of epoch saw
    assert _accuracy(_logits(tuned, x), y) > _accuracy(before, y) + 0.05
    codes = [layer.qweight for _, layer in quant_layers(tuned)]
    assert any(not torch.equal(a, b.qweight) for a, (_, b) in zip(codes, quant_layers(q)))  # weights moved
    assert all(c is not None for c in codes)  # and were frozen again
    assert torch.equal(_logits(q, x), before)  # the model passed in is left as it was


def test_label_free_distillation_improves_a_w2a4_model(fmnist):
    q, x, y, reference = fmnist["q"], fmnist["x"], fmnist["y"], fmnist["reference"]
    images = torch.stack([fmnist["train"][i][0] for i in range(len(fmnist["train"]))])  # no labels
    tuned = lowbit.finetune(q, images, teacher=fmnist["model"], **SHORT, val_images=64)
    run = tuned.lowbit_info.extra["finetune"]
    assert run["objective"] == "distill_kl" and run["held_out_metric"] == "distillation loss"
    assert run["history"][1]["held_out_loss"] < run["history"][0]["held_out_loss"]
    before, after = _logits(q, x), _logits(tuned, x)
    assert sqnr_db(reference, after) > sqnr_db(reference, before) + 1.0
    assert _accuracy(after, y) > _accuracy(before, y)


# The tiny residual net below runs the mechanics in well under a second per run.

@pytest.fixture(scope="module")
def tiny() -> dict:
    """A W3A3 residual net and 256 images labelled by the float net (well-defined targets for any weights)."""
    torch.manual_seed(0)
    model = randomize_bn(ResidualNet())
    x = torch.randn(256, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    q = lowbit.quantize(model, x[:64], weights_bits=3, activation_bits=3)
    return {"model": model, "q": q, "x": x, "y": y, "probe": x[:8]}


def test_save_load_after_finetune_is_bit_exact(tiny, tmp_path, device):
    x = tiny["x"].to(device)
    q = lowbit.quantize(copy.deepcopy(tiny["model"]).to(device), x[:64], weights_bits=3, activation_bits=3)
    tuned = lowbit.finetune(q, (tiny["x"], tiny["y"]), **SHORT)
    path = lowbit.save(tuned, tmp_path / "tuned.lowbit")
    loaded = lowbit.load(str(path), model=ResidualNet(), device=device)
    assert torch.equal(_logits(loaded, x), _logits(tuned, x))
    run = loaded.lowbit_record.provenance["finetune"]
    assert [r["epoch"] for r in run["history"]] == [0, 1] and run["options"]["lr"] == SHORT["lr"]


def test_the_epoch_kept_is_the_best_on_held_out_training_images(tiny, monkeypatch):
    """Scores are made up so that epoch 1 is best; the model returned must be the one evaluated at epoch 1."""
    made_up = iter([0.5, 0.9, 0.6, 0.8])
    seen: list[torch.Tensor] = []
    held_out_sizes: list[int] = []
    real_evaluate = Trainer.evaluate

    def evaluate(self: Trainer) -> dict:
        held_out_sizes.append(len(self.data.held_out))
        seen.append(_logits(self.frozen_copy(), tiny["probe"]))
        real_evaluate(self)
        return {"held_out_top1": next(made_up), "held_out_loss": 1.0}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    tuned = lowbit.finetune(tiny["q"], (tiny["x"], tiny["y"]), **{**SHORT, "epochs": 3}, val_images=40)
    assert tuned.lowbit_info.extra["finetune"]["kept_epoch"] == 1
    out = _logits(tuned, tiny["probe"])
    assert torch.equal(out, seen[1]) and not torch.allclose(out, seen[3], atol=1e-5)
    assert held_out_sizes == [40] * 4  # held out of the training data passed in: finetune is given no test data


def test_a_worse_run_returns_the_starting_model(tiny, monkeypatch):
    made_up = iter([0.7, 0.5])
    monkeypatch.setattr(Trainer, "evaluate", lambda self: {"held_out_top1": next(made_up), "held_out_loss": 1.0})
    tuned = lowbit.finetune(tiny["q"], (tiny["x"], tiny["y"]), **SHORT)
    assert tuned.lowbit_info.extra["finetune"]["kept_epoch"] == 0
    assert torch.equal(_logits(tuned, tiny["x"]), _logits(tiny["q"], tiny["x"]))


class Interrupt(Exception):
    pass


def test_resume_continues_the_epoch_count_and_matches_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    options = {**SHORT, "epochs": 3, "checkpoint_every": 3}
    data = (tiny["x"], tiny["y"])
    straight = lowbit.finetune(tiny["q"], data, **options)
    checkpoint = tmp_path / "run.ckpt.lowbit"
    real_step = Trainer.train_step

    def interrupted_step(self: Trainer, x, y):
        if self.state.global_step == 20:  # in epoch 3 of 3 (8 steps each), after the checkpoint of step 18
            raise Interrupt
        return real_step(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    with pytest.raises(Interrupt):
        lowbit.finetune(tiny["q"], data, **options, checkpoint=checkpoint)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    progress = lowbit.io.lowbit_file.read_record(checkpoint).provenance["finetune"]["progress"]
    assert (progress["epoch"], progress["step"], progress["global_step"]) == (2, 2, 18)
    assert state_path(checkpoint).is_file()

    resumed = lowbit.finetune(tiny["q"], data, **options, checkpoint=checkpoint, resume=checkpoint)
    run = resumed.lowbit_info.extra["finetune"]
    assert [r["epoch"] for r in run["history"]] == [0, 1, 2, 3] and run["resumed_from"] == str(checkpoint)
    assert torch.allclose(_logits(resumed, tiny["x"]), _logits(straight, tiny["x"]), atol=1e-6)


def test_range_tracker_moves_ranges_by_the_momentum():
    q = Quantizer(activation_spec(4))
    q.set_qparams(*qmath.choose_qparams(torch.tensor(0.0), torch.tensor(2.0), 4, False))
    q.set_state("quantize")
    lo0, hi0 = grid_range(q)
    tracker = RangeTracker(0.9).attach([("a", q)])
    x = torch.linspace(-1.0, 6.0, 50)
    q.train()
    q(x)
    lo, hi = 0.9 * lo0 + 0.1 * -1.0, 0.9 * hi0 + 0.1 * 6.0
    scale, zp = qmath.choose_qparams(lo, hi, 4, False)
    assert torch.allclose(q.scale, scale) and torch.equal(q.zero_point, zp)
    q.eval()
    q(x * 10)  # evaluation does not move the range
    assert torch.allclose(q.scale, scale)
    tracker.detach()
    q.train()
    q(x * 10)
    assert torch.allclose(q.scale, scale)


def test_finetune_with_range_momentum_tracks_activation_ranges(tiny, monkeypatch):
    made_up = iter([0.5, 0.9])  # keep the trained epoch whatever it scores
    monkeypatch.setattr(Trainer, "evaluate", lambda self: {"held_out_top1": next(made_up), "held_out_loss": 1.0})
    tuned = lowbit.finetune(tiny["q"], (tiny["x"], tiny["y"]), **SHORT, act_range_momentum=0.5)
    start = dict(activation_quantizers(tiny["q"]))
    moved = [name for name, q in activation_quantizers(tuned)
             if q.state == "quantize" and not torch.equal(q.scale, start[name].scale)]
    assert moved and all(not isinstance(q.scale, nn.Parameter) for _, q in activation_quantizers(tuned))


def test_batchnorm_stays_fixed_in_module_swap_mode(monkeypatch):
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = x * 1.0
            return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))

    model = randomize_bn(Untraceable())
    x = torch.randn(96, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="module swapping"):
        q = lowbit.quantize(model, x, weights_bits=4, activation_bits=4)
    made_up = iter([0.5, 0.9])  # keep the trained epoch whatever it scores
    bn_training = []

    def evaluate(self: Trainer) -> dict:
        bn_training.append(self.model.bn.training)  # the mode training left it in
        return {"held_out_top1": next(made_up), "held_out_loss": 1.0}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    tuned = lowbit.finetune(q, (x, torch.randint(0, 3, (96,))), **SHORT)
    assert tuned.lowbit_info.extra["finetune"]["kept_epoch"] == 1 and bn_training == [False, False]
    for key in ("bn.running_mean", "bn.running_var", "bn.weight", "bn.bias"):
        assert torch.equal(tuned.state_dict()[key], q.state_dict()[key])
    assert not torch.equal(tuned.state_dict()["conv.weight"], q.state_dict()["conv.weight"])


@pytest.mark.parametrize("form", ["dataset", "loader", "batches", "inputs"])
def test_training_data_takes_the_calibration_forms(tiny, form):
    x, y = tiny["x"][:96], tiny["y"][:96]
    data = {"dataset": TensorDataset(x, y), "loader": DataLoader(TensorDataset(x, y), batch_size=16),
            "batches": [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)], "inputs": x}[form]
    run = lowbit.finetune(tiny["q"], data, **SHORT).lowbit_info.extra["finetune"]
    assert run["train_images"] + run["held_out_images"] == 96
    assert run["objective"] == ("distill_kl" if form == "inputs" else "cross_entropy")


def test_data_percentage_trains_on_a_share_of_the_images(tiny):
    run = lowbit.finetune(tiny["q"], (tiny["x"], tiny["y"]), **SHORT, data_percentage=0.25,
                          val_images=56).lowbit_info.extra["finetune"]
    assert (run["held_out_images"], run["train_images"]) == (56, 50)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"lr": 0.0}, {"lr": -1e-3}, {"lr": math.nan}, {"lr": math.inf},
                                 {"data_percentage": 0.0}, {"data_percentage": 1.5}, {"data_percentage": math.nan},
                                 {"act_range_momentum": 1.0}, {"batch_size": 0}, {"val_fraction": 1.0},
                                 {"weight_decay": -1.0}, {"optimizer": "lion"}])
def test_bad_options_are_one_line_errors(bad):
    with pytest.raises(LowbitError) as err:
        FinetuneOptions(**bad)
    message = str(err.value)
    assert "\n" not in message and next(iter(bad)) in message


def test_bad_calls_are_one_line_errors(tiny):
    with pytest.raises(LowbitError, match="unknown fine-tuning option 'epoch'"):
        lowbit.finetune(tiny["q"], tiny["x"], epoch=2)
    with pytest.raises(LowbitError, match="quantized model"):
        lowbit.finetune(tiny["model"], tiny["x"])
    with pytest.raises(LowbitError, match="val_images"):
        lowbit.finetune(tiny["q"], tiny["x"][:10], val_images=10)
    with pytest.raises(LowbitError, match="labels must be class indices"):
        lowbit.finetune(tiny["q"], (tiny["x"], tiny["y"].float()))


def test_distilling_from_its_own_narrow_codes_is_called_out(tiny, caplog):
    images = tiny["x"][:96]  # no labels: the model distills
    with caplog.at_level("WARNING", logger="lowbit.qat.finetune"):
        lowbit.finetune(tiny["q"], images, **SHORT)
    assert "3-bit codes, a poor teacher" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="lowbit.qat.finetune"):
        lowbit.finetune(tiny["q"], images, teacher=tiny["model"], **SHORT)
    assert "poor teacher" not in caplog.text


def test_a_given_float_teacher_is_learned_from_even_with_labels(tiny):
    labelled = (tiny["x"][:96], tiny["y"][:96])
    run = lowbit.finetune(tiny["q"], labelled, teacher=tiny["model"], **SHORT).lowbit_info.extra["finetune"]
    assert run["objective"] == "distill_kl" and run["teacher"] == "given"
    assert run["held_out_metric"] == "top1"  # the epoch kept is still chosen against the labels
    run = lowbit.finetune(tiny["q"], labelled, **SHORT).lowbit_info.extra["finetune"]
    assert run["objective"] == "cross_entropy" and run["teacher"] is None
